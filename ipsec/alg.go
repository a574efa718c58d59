package ipsec

import (
	"fmt"
	"strings"
)

// Enc is an ESP encryption (or combined-mode) transform.
type Enc uint8

// ESP encryption transforms. RFC 8221 makes ENCR_NULL, ENCR_AES_CBC and
// ENCR_AES_GCM_16 MUST; ChaCha20-Poly1305 is SHOULD; AES-CTR is MAY.
const (
	EncNone             Enc = iota // no ESP: the SA is AH
	EncNull                        // RFC 2410
	EncAESCBC                      // RFC 3602, 128/192/256-bit key
	EncAESCTR                      // RFC 3686, key ‖ 4-byte nonce
	EncAESGCM12                    // RFC 4106, 12-octet ICV, key ‖ 4-byte salt
	EncAESGCM16                    // RFC 4106, 16-octet ICV
	EncChaCha20Poly1305            // RFC 7634, 32-byte key ‖ 4-byte salt
)

// Integ is an integrity transform for ESP (with a non-AEAD cipher) or AH.
type Integ uint8

// Integrity transforms. RFC 8221 makes HMAC-SHA2-256-128 MUST and
// HMAC-SHA1-96 MUST- for both ESP and AH.
const (
	IntegNone       Integ = iota
	IntegSHA1_96          // RFC 2404
	IntegSHA256_128       // RFC 4868
	IntegSHA384_192       // RFC 4868
	IntegSHA512_256       // RFC 4868
)

var encNames = map[Enc]string{
	EncNone: "none", EncNull: "null", EncAESCBC: "aes-cbc", EncAESCTR: "aes-ctr",
	EncAESGCM12: "aes-gcm12", EncAESGCM16: "aes-gcm16",
	EncChaCha20Poly1305: "chacha20-poly1305",
}

var integNames = map[Integ]string{
	IntegNone: "none", IntegSHA1_96: "hmac-sha1-96", IntegSHA256_128: "hmac-sha256-128",
	IntegSHA384_192: "hmac-sha384-192", IntegSHA512_256: "hmac-sha512-256",
}

func (e Enc) String() string {
	if s, ok := encNames[e]; ok {
		return s
	}
	return fmt.Sprintf("enc(%d)", uint8(e))
}

func (i Integ) String() string {
	if s, ok := integNames[i]; ok {
		return s
	}
	return fmt.Sprintf("integ(%d)", uint8(i))
}

// ParseEnc parses an encryption transform name as String writes it.
func ParseEnc(s string) (Enc, error) {
	for k, v := range encNames {
		if strings.EqualFold(s, v) {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown encryption transform %q", s)
}

// ParseInteg parses an integrity transform name as String writes it.
func ParseInteg(s string) (Integ, error) {
	for k, v := range integNames {
		if strings.EqualFold(s, v) {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown integrity transform %q", s)
}

// AEAD reports whether e is a combined-mode transform, whose one key both
// decrypts and forges (so it can never be handed out for class read).
func (e Enc) AEAD() bool {
	switch e {
	case EncAESGCM12, EncAESGCM16, EncChaCha20Poly1305:
		return true
	}
	return false
}

// saltLen is the number of key bytes that are a salt or nonce, not key.
func (e Enc) saltLen() int {
	switch e {
	case EncAESCTR, EncAESGCM12, EncAESGCM16, EncChaCha20Poly1305:
		return 4
	}
	return 0
}

// checkKey validates the length of an encryption key (with salt).
func (e Enc) checkKey(k []byte) error {
	n := len(k) - e.saltLen()
	switch e {
	case EncNone, EncNull:
		if len(k) != 0 {
			return fmt.Errorf("%v takes no key, got %d bytes", e, len(k))
		}
		return nil
	case EncChaCha20Poly1305:
		if n != 32 {
			return fmt.Errorf("%v key must be 32+4 bytes, got %d", e, len(k))
		}
		return nil
	case EncAESCBC, EncAESCTR, EncAESGCM12, EncAESGCM16:
		if n != 16 && n != 24 && n != 32 {
			return fmt.Errorf("%v key must be 16, 24 or 32 bytes%s, got %d", e, saltNote(e), len(k))
		}
		return nil
	}
	return fmt.Errorf("unknown encryption transform %d", uint8(e))
}

func saltNote(e Enc) string {
	if e.saltLen() > 0 {
		return " plus a 4-byte salt"
	}
	return ""
}

// icvLen returns the ICV length an integrity transform produces.
func (i Integ) icvLen() int {
	switch i {
	case IntegSHA1_96:
		return 12
	case IntegSHA256_128:
		return 16
	case IntegSHA384_192:
		return 24
	case IntegSHA512_256:
		return 32
	}
	return 0
}

// keyLen returns the HMAC key length RFC 2404 / RFC 4868 require.
func (i Integ) keyLen() int {
	switch i {
	case IntegSHA1_96:
		return 20
	case IntegSHA256_128:
		return 32
	case IntegSHA384_192:
		return 48
	case IntegSHA512_256:
		return 64
	}
	return 0
}

// KeyLen is the length of a key (with its salt) that espep generates for
// e: 128-bit AES, ChaCha20's 256 bits; 0 for none and null.
func (e Enc) KeyLen() int {
	switch e {
	case EncChaCha20Poly1305:
		return 32 + e.saltLen()
	case EncAESCBC, EncAESCTR, EncAESGCM12, EncAESGCM16:
		return 16 + e.saltLen()
	}
	return 0
}

// KeyLen is the HMAC key length RFC 2404 / RFC 4868 require for i.
func (i Integ) KeyLen() int { return i.keyLen() }
