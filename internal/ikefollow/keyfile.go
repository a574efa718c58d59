package ikefollow

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/internal/keyval"
)

// The IKE key file, version 1: the IKE SA keys a party delegates to a
// gateway, one [ike] block per IKE SA, in the grammar of every espep
// key = value file (internal/keyval):
//
//	espep-ike 1
//
//	[ike]
//	spi-i = 0x6a8af604fdf76002     # with spi-r: binds to that IKE SA; both omitted: to
//	spi-r = 0x7f9a010e9cd38a63     #   the IKE SA whose message the keys verify
//	prf   = hmac-sha2-256          # hmac-sha1 hmac-sha2-256 hmac-sha2-384 hmac-sha2-512
//	encr  = aes-cbc                # aes-cbc aes-gcm12 aes-gcm16 chacha20-poly1305
//	integ = hmac-sha2-256-128      # none (with an AEAD) hmac-sha1-96 hmac-sha2-256-128 …
//	sk-d  = 0x…                    # SK_d, SK_ai, SK_ar, SK_ei, SK_er (RFC 7296 §2.14);
//	sk-ai = 0x…                    #   for an AEAD sk-e* is the key ‖ its 4-byte salt
//	sk-ar = 0x…
//	sk-ei = 0x…
//	sk-er = 0x…
//
// SK_pi and SK_pr are not taken: a gateway must not be able to
// authenticate as a peer. Wireshark's ikev2_decryption_table (what
// strongSwan's save-keys writes) has no SK_d, so it cannot be used to
// derive CHILD_SA keys; it is not read.

const keyFileMagic = "espep-ike"

var prfNames = map[string]uint16{
	"hmac-sha1": ikev2.PRFHMACSHA1, "hmac-sha2-256": ikev2.PRFHMACSHA2256,
	"hmac-sha2-384": ikev2.PRFHMACSHA2384, "hmac-sha2-512": ikev2.PRFHMACSHA2512,
}

var encrNames = map[string]uint16{
	"aes-cbc": ikev2.EncrAESCBC, "aes-gcm12": ikev2.EncrAESGCM12, "aes-gcm16": ikev2.EncrAESGCM16,
	"chacha20-poly1305": ikev2.EncrChaCha20Poly1305,
}

var integNames = map[string]uint16{
	"none": 0, "hmac-sha1-96": ikev2.IntegHMACSHA196, "hmac-sha2-256-128": ikev2.IntegHMACSHA2256128,
	"hmac-sha2-384-192": ikev2.IntegHMACSHA2384192, "hmac-sha2-512-256": ikev2.IntegHMACSHA2512256,
}

// MaxKeyFileBlocks bounds what one key file may give.
const MaxKeyFileBlocks = 4096

// ParseKeyFile reads an IKE key file. Every block must be complete and
// valid (Keys.Validate); a mistake is an error naming the file, line and
// field, and the keys read so far are wiped.
func ParseKeyFile(r io.Reader, name string) ([]ikev2.Keys, error) {
	rd := keyval.NewReader(r, name, keyFileMagic, 1)
	var out []ikev2.Keys
	fail := func(err error) ([]ikev2.Keys, error) {
		for i := range out {
			out[i].Wipe()
		}
		return nil, err
	}
	var cur *ikev2.Keys
	var start keyval.Line
	finish := func() error {
		if cur == nil {
			return nil
		}
		if err := cur.Validate(); err != nil {
			return rd.Wrap(start, "", err)
		}
		if (cur.SPIi == 0) != (cur.SPIr == 0) {
			return rd.Errorf(start, "spi-r", "give both spi-i and spi-r, or neither")
		}
		out = append(out, *cur)
		cur = nil
		return nil
	}
	for {
		l, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fail(err)
		}
		if l.Header {
			if err := finish(); err != nil {
				return fail(err)
			}
			if l.Section != "ike" {
				return fail(rd.Errorf(l, "", "unknown section [%s]", l.Section))
			}
			if len(out) == MaxKeyFileBlocks {
				return fail(rd.Errorf(l, "", "more than %d [ike] blocks", MaxKeyFileBlocks))
			}
			cur, start = &ikev2.Keys{}, l
			continue
		}
		if cur == nil {
			return fail(rd.Errorf(l, l.Key, "outside an [ike] block"))
		}
		if err := setKey(cur, l.Key, l.Value); err != nil {
			return fail(rd.Wrap(l, l.Key, err))
		}
	}
	if err := finish(); err != nil {
		return fail(err)
	}
	return out, nil
}

// TransformID is the ID of a transform by its name in the key file
// ("hmac-sha2-256", "aes-gcm16", "none"); kind is "prf", "encr" or
// "integ".
func TransformID(kind, name string) (uint16, error) {
	m := map[string]map[string]uint16{"prf": prfNames, "encr": encrNames, "integ": integNames}[kind]
	id, ok := m[strings.ToLower(name)]
	if !ok {
		return 0, fmt.Errorf("%s %q not supported", kind, name)
	}
	return id, nil
}

// TransformNames are the names of k's transforms in the key file.
func TransformNames(k *ikev2.Keys) (prf, encr, integ string) {
	nameOf := func(m map[string]uint16, id uint16) string {
		for n, v := range m {
			if v == id {
				return n
			}
		}
		return strconv.Itoa(int(id))
	}
	return nameOf(prfNames, k.PRF), nameOf(encrNames, k.Encr), nameOf(integNames, k.Integ)
}

func setKey(k *ikev2.Keys, key, v string) error {
	var err error
	switch key {
	case "spi-i", "spi-r":
		var s uint64
		if s, err = strconv.ParseUint(strings.TrimPrefix(v, "0x"), 16, 64); err != nil || s == 0 {
			return fmt.Errorf("%q: want a non-zero 64-bit hex SPI", v)
		}
		if key == "spi-i" {
			k.SPIi = s
		} else {
			k.SPIr = s
		}
	case "prf", "encr", "integ":
		var id uint16
		if id, err = TransformID(key, v); err == nil {
			*map[string]*uint16{"prf": &k.PRF, "encr": &k.Encr, "integ": &k.Integ}[key] = id
		}
	case "sk-d", "sk-ai", "sk-ar", "sk-ei", "sk-er":
		b, herr := hex.DecodeString(strings.TrimPrefix(v, "0x"))
		if herr != nil || len(b) == 0 || len(b) > 64 {
			return fmt.Errorf("want 1 to 64 bytes of hex")
		}
		*map[string]*[]byte{"sk-d": &k.D, "sk-ai": &k.Ai, "sk-ar": &k.Ar, "sk-ei": &k.Ei, "sk-er": &k.Er}[key] = b
	default:
		return errors.New("unknown key")
	}
	return err
}

// AppendKeyFile writes keys as ParseKeyFile reads them, with the first
// line when b is empty.
func AppendKeyFile(b []byte, keys ...ikev2.Keys) []byte {
	if len(b) == 0 {
		b = append(b, keyFileMagic+" 1\n"...)
	}
	for _, k := range keys {
		b = append(b, "\n[ike]\n"...)
		if k.SPIi != 0 || k.SPIr != 0 {
			b = fmt.Appendf(b, "spi-i = %#016x\nspi-r = %#016x\n", k.SPIi, k.SPIr)
		}
		prf, encr, integ := TransformNames(&k)
		b = fmt.Appendf(b, "prf = %s\nencr = %s\ninteg = %s\n", prf, encr, integ)
		for _, x := range []struct {
			n string
			v []byte
		}{{"sk-d", k.D}, {"sk-ai", k.Ai}, {"sk-ar", k.Ar}, {"sk-ei", k.Ei}, {"sk-er", k.Er}} {
			if len(x.v) > 0 {
				b = fmt.Appendf(b, "%s = 0x%x\n", x.n, x.v)
			}
		}
	}
	return b
}
