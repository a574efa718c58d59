package ikev2

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"

	"golang.org/x/crypto/chacha20poly1305"
)

// IKEv2 transform IDs (IANA "IKEv2 Transform Type 1/2/3 Transform IDs")
// that a gateway following IKE understands.
const (
	EncrNull             = 11 // ESP only
	EncrAESCBC           = 12 // RFC 3602
	EncrAESCTR           = 13 // RFC 3686 (ESP only here)
	EncrAESGCM8          = 18 // RFC 4106 / RFC 5282 (not supported: Go's GCM takes 12–16-byte tags)
	EncrAESGCM12         = 19
	EncrAESGCM16         = 20
	EncrChaCha20Poly1305 = 28 // RFC 7634

	PRFHMACSHA1    = 2
	PRFHMACSHA2256 = 5
	PRFHMACSHA2384 = 6
	PRFHMACSHA2512 = 7

	IntegHMACSHA196      = 2
	IntegHMACSHA2256128  = 12
	IntegHMACSHA2384192  = 13
	IntegHMACSHA2512256  = 14
	ESNNone, ESNExtended = 0, 1
)

// ErrIntegrity is returned when an SK payload's integrity check (or AEAD
// tag) does not verify: the message was not sent with these keys.
var ErrIntegrity = errors.New("ikev2: integrity check failed")

// ErrUnsupported is returned for a transform this package cannot use.
var ErrUnsupported = errors.New("ikev2: unsupported transform")

// Keys are an IKE SA's keys (RFC 7296 §2.14) as a party that holds them
// delegates them to a gateway: enough to open every SK payload of the IKE
// SA, both directions, and to derive its CHILD_SAs' keys — not to
// authenticate as either peer (SK_pi and SK_pr are not here).
//
// SPIi and SPIr name the IKE SA; both zero means the delegating party did
// not know them (a charon log prints keys without SPIs), and the keys are
// bound to the IKE SA whose messages they verify.
type Keys struct {
	SPIi, SPIr uint64
	PRF        uint16 // PRF transform ID
	Encr       uint16 // encryption transform ID
	Integ      uint16 // integrity transform ID; 0 with an AEAD
	// SK_d, SK_ai, SK_ar, SK_ei, SK_er. For an AEAD SK_e is the key and
	// its 4-byte salt (RFC 5282 §7.1, RFC 7634 §3); SK_a is empty.
	D, Ai, Ar, Ei, Er []byte
}

// Validate checks that the transforms are ones this package uses and the
// keys have their lengths.
func (k *Keys) Validate() error {
	if _, err := prfHash(k.PRF); err != nil {
		return err
	}
	if len(k.D) == 0 {
		return fmt.Errorf("ikev2: keys: no SK_d")
	}
	if _, _, err := skLens(k.Encr, k.Integ); err != nil {
		return err
	}
	if aead(k.Encr) {
		if k.Integ != 0 || len(k.Ai) != 0 || len(k.Ar) != 0 {
			return fmt.Errorf("ikev2: keys: encryption %d is an AEAD; integrity %d with %d/%d key bytes", k.Encr, k.Integ, len(k.Ai), len(k.Ar))
		}
	} else if n := integKeyLen(k.Integ); len(k.Ai) != n || len(k.Ar) != n {
		return fmt.Errorf("ikev2: keys: integrity %d: SK_ai %d and SK_ar %d bytes, want %d", k.Integ, len(k.Ai), len(k.Ar), n)
	}
	for _, e := range [][]byte{k.Ei, k.Er} {
		if err := checkSKe(k.Encr, len(e)); err != nil {
			return err
		}
	}
	return nil
}

// Wipe zeroes the keys.
func (k *Keys) Wipe() {
	for _, b := range [][]byte{k.D, k.Ai, k.Ar, k.Ei, k.Er} {
		clear(b)
	}
}

// Clone returns a copy of k with its own key bytes.
func (k Keys) Clone() Keys {
	for _, p := range []*[]byte{&k.D, &k.Ai, &k.Ar, &k.Ei, &k.Er} {
		*p = append([]byte(nil), *p...)
	}
	return k
}

func aead(encr uint16) bool {
	switch encr {
	case EncrAESGCM8, EncrAESGCM12, EncrAESGCM16, EncrChaCha20Poly1305:
		return true
	}
	return false
}

// skLens returns the IV and checksum lengths of an SK payload under the
// transforms (RFC 7296 §3.14, RFC 5282 §3, RFC 7634 §2).
func skLens(encr, integ uint16) (ivLen, icvLen int, err error) {
	switch encr {
	case EncrAESCBC:
		if icvLen = integICVLen(integ); icvLen == 0 {
			return 0, 0, fmt.Errorf("%w: integrity %d", ErrUnsupported, integ)
		}
		return aes.BlockSize, icvLen, nil
	case EncrAESGCM12:
		return 8, 12, nil
	case EncrAESGCM16, EncrChaCha20Poly1305:
		return 8, 16, nil
	}
	return 0, 0, fmt.Errorf("%w: encryption %d for IKE", ErrUnsupported, encr)
}

func checkSKe(encr uint16, n int) error {
	switch encr {
	case EncrAESCBC:
		if n == 16 || n == 24 || n == 32 {
			return nil
		}
	case EncrAESGCM12, EncrAESGCM16:
		if n == 20 || n == 28 || n == 36 {
			return nil
		}
	case EncrChaCha20Poly1305:
		if n == 36 {
			return nil
		}
	default:
		return fmt.Errorf("%w: encryption %d for IKE", ErrUnsupported, encr)
	}
	return fmt.Errorf("ikev2: keys: encryption %d: SK_e of %d bytes", encr, n)
}

func integICVLen(integ uint16) int {
	switch integ {
	case IntegHMACSHA196:
		return 12
	case IntegHMACSHA2256128:
		return 16
	case IntegHMACSHA2384192:
		return 24
	case IntegHMACSHA2512256:
		return 32
	}
	return 0
}

// integKeyLen is the key length of an HMAC integrity transform: the
// hash's output (RFC 2404, RFC 4868).
func integKeyLen(integ uint16) int {
	switch integ {
	case IntegHMACSHA196:
		return 20
	case IntegHMACSHA2256128:
		return 32
	case IntegHMACSHA2384192:
		return 48
	case IntegHMACSHA2512256:
		return 64
	}
	return 0
}

func integHash(integ uint16) func() hash.Hash {
	switch integ {
	case IntegHMACSHA196:
		return sha1.New
	case IntegHMACSHA2256128:
		return sha256.New
	case IntegHMACSHA2384192:
		return sha512.New384
	case IntegHMACSHA2512256:
		return sha512.New
	}
	return nil
}

func prfHash(prf uint16) (func() hash.Hash, error) {
	switch prf {
	case PRFHMACSHA1:
		return sha1.New, nil
	case PRFHMACSHA2256:
		return sha256.New, nil
	case PRFHMACSHA2384:
		return sha512.New384, nil
	case PRFHMACSHA2512:
		return sha512.New, nil
	}
	return nil, fmt.Errorf("%w: prf %d", ErrUnsupported, prf)
}

// PRFPlus is prf+ (RFC 7296 §2.13): n bytes of
// T1 | T2 | … with T1 = prf(K, S | 0x01), Tk = prf(K, Tk-1 | S | k).
// At most 255 blocks can be made.
func PRFPlus(prf uint16, key, seed []byte, n int) ([]byte, error) {
	h, err := prfHash(prf)
	if err != nil {
		return nil, err
	}
	mac := hmac.New(h, key)
	if n < 0 || n > 255*mac.Size() {
		return nil, fmt.Errorf("ikev2: prf+: %d bytes asked, at most %d", n, 255*mac.Size())
	}
	out := make([]byte, 0, n+mac.Size())
	var t []byte
	for i := byte(1); len(out) < n; i++ {
		mac.Reset()
		mac.Write(t)
		mac.Write(seed)
		mac.Write([]byte{i})
		t = mac.Sum(out)[len(out):]
		out = out[:len(out)+len(t)]
	}
	return out[:n], nil
}

// Open verifies and decrypts the SK payload of the message b (as parsed
// into m, whose last payload it must be) with the keys of the direction
// it was sent in — SK_ai/SK_ei if the original initiator sent it — and
// returns the payloads it held. The integrity check comes first: nothing
// of a message that does not verify is decrypted. An SKF (fragment)
// payload is ErrUnsupported.
func (k *Keys) Open(b []byte, m *Message) ([]Payload, error) {
	if len(m.Payloads) == 0 {
		return nil, malformed("sk: no payloads")
	}
	sk := m.Payloads[len(m.Payloads)-1]
	switch sk.Type {
	case PayloadSK:
	case PayloadSKF:
		return nil, fmt.Errorf("%w: fragmented message (RFC 7383)", ErrUnsupported)
	default:
		return nil, malformed("no SK payload")
	}
	ivLen, icvLen, err := skLens(k.Encr, k.Integ)
	if err != nil {
		return nil, err
	}
	iv, ct, icv, err := SplitSK(sk.Body, ivLen, icvLen)
	if err != nil {
		return nil, err
	}
	// SK is the last payload and the header's length is len(b): its
	// body ends the message.
	bodyAt := len(b) - len(sk.Body)
	ek, ak := k.Er, k.Ar
	if m.Initiator() {
		ek, ak = k.Ei, k.Ai
	}
	var plain []byte
	if aead(k.Encr) {
		plain, err = openAEAD(k.Encr, ek, iv, ct, icv, b[:bodyAt])
	} else {
		plain, err = openCBC(k.Integ, ek, ak, iv, ct, icv, b[:len(b)-icvLen])
	}
	if err != nil {
		return nil, err
	}
	// The padding and its length end the plaintext (RFC 7296 §3.14).
	pad := int(plain[len(plain)-1])
	if pad+1 > len(plain) {
		return nil, malformed("sk: pad length %d of %d bytes", pad, len(plain))
	}
	return ParseChain(sk.Next, plain[:len(plain)-pad-1])
}

// openCBC checks the HMAC over signed (the message up to the checksum),
// then decrypts AES-CBC.
func openCBC(integ uint16, ek, ak, iv, ct, icv, signed []byte) ([]byte, error) {
	h := integHash(integ)
	if h == nil {
		return nil, fmt.Errorf("%w: integrity %d", ErrUnsupported, integ)
	}
	mac := hmac.New(h, ak)
	mac.Write(signed)
	if subtle.ConstantTimeCompare(mac.Sum(nil)[:len(icv)], icv) != 1 {
		return nil, ErrIntegrity
	}
	if len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return nil, malformed("sk: %d bytes of AES-CBC ciphertext", len(ct))
	}
	block, err := aes.NewCipher(ek)
	if err != nil {
		return nil, fmt.Errorf("ikev2: sk: %w", err)
	}
	plain := make([]byte, len(ct))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(plain, ct)
	return plain, nil
}

// openAEAD opens an AEAD SK payload: the nonce is the key's salt and the
// 8-byte IV; the associated data is the message up to the IV (RFC 5282
// §5.1, RFC 7634 §2).
func openAEAD(encr uint16, ek, iv, ct, icv, aad []byte) ([]byte, error) {
	key, salt := ek[:len(ek)-4], ek[len(ek)-4:]
	var a cipher.AEAD
	var err error
	switch encr {
	case EncrChaCha20Poly1305:
		a, err = chacha20poly1305.New(key)
	case EncrAESGCM12, EncrAESGCM16:
		var block cipher.Block
		if block, err = aes.NewCipher(key); err == nil {
			a, err = cipher.NewGCMWithTagSize(block, len(icv))
		}
	default:
		err = fmt.Errorf("%w: encryption %d", ErrUnsupported, encr)
	}
	if err != nil {
		return nil, fmt.Errorf("ikev2: sk: %w", err)
	}
	nonce := append(append(make([]byte, 0, 12), salt...), iv...)
	sealed := append(append(make([]byte, 0, len(ct)+len(icv)), ct...), icv...)
	plain, err := a.Open(sealed[:0], nonce, sealed, aad)
	if err != nil {
		return nil, ErrIntegrity
	}
	if len(plain) == 0 {
		return nil, malformed("sk: empty plaintext")
	}
	return plain, nil
}
