package safile

import (
	"bufio"
	"fmt"
	"github.com/espep/espep/internal/keyval"
	"io"
	"strconv"
	"strings"

	"github.com/espep/espep/ipsec"
)

// Wireshark's esp_sa UAT (epan/dissectors/packet-esp.c) has one SA per
// line, eight quoted comma-separated fields:
//
//	"IPv4","10.77.1.1","10.77.2.1","0xc0de0001","AES-GCM with 16 octet ICV [RFC4106]","0xKEY‖SALT","NULL",""
//
// protocol, source, destination, SPI, encryption, encryption key,
// authentication, authentication key. Addresses may be "*". Later
// Wireshark versions append fields (sequence-number options); they are
// accepted and ignored. The mode is not recorded, so SAs read from here
// have Mode ModeAny, and no ESN.

// wsEnc maps Wireshark encryption names (lower case, without the bracketed
// reference) to transforms.
var wsEnc = map[string]ipsec.Enc{
	"null":                                ipsec.EncNull,
	"aes-cbc":                             ipsec.EncAESCBC,
	"aes-ctr":                             ipsec.EncAESCTR,
	"aes-gcm with 12 octet icv":           ipsec.EncAESGCM12,
	"aes-gcm with 16 octet icv":           ipsec.EncAESGCM16,
	"chacha20 with poly1305":              ipsec.EncChaCha20Poly1305,
	"chacha20-poly1305":                   ipsec.EncChaCha20Poly1305,
	"chacha20/poly1305":                   ipsec.EncChaCha20Poly1305,
	"chacha20-poly1305 with 16 octet icv": ipsec.EncChaCha20Poly1305,
}

var wsInteg = map[string]ipsec.Integ{
	"null":             ipsec.IntegNone,
	"hmac-sha-1-96":    ipsec.IntegSHA1_96,
	"hmac-sha-256-128": ipsec.IntegSHA256_128,
	"hmac-sha-384-192": ipsec.IntegSHA384_192,
	"hmac-sha-512-256": ipsec.IntegSHA512_256,
}

// wsEncName and wsIntegName are the names Wireshark 4.0 writes.
var wsEncName = map[ipsec.Enc]string{
	ipsec.EncNull:     "NULL",
	ipsec.EncAESCBC:   "AES-CBC [RFC3602]",
	ipsec.EncAESCTR:   "AES-CTR [RFC3686]",
	ipsec.EncAESGCM12: "AES-GCM with 12 octet ICV [RFC4106]",
	ipsec.EncAESGCM16: "AES-GCM with 16 octet ICV [RFC4106]",
}

var wsIntegName = map[ipsec.Integ]string{
	ipsec.IntegNone:       "NULL",
	ipsec.IntegSHA1_96:    "HMAC-SHA-1-96 [RFC2404]",
	ipsec.IntegSHA256_128: "HMAC-SHA-256-128 [RFC4868]",
	ipsec.IntegSHA384_192: "HMAC-SHA-384-192 [RFC4868]",
	ipsec.IntegSHA512_256: "HMAC-SHA-512-256 [RFC4868]",
}

func wsName(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if i := strings.Index(s, " ["); i >= 0 {
		s = s[:i]
	}
	return s
}

// ParseESPSA reads Wireshark esp_sa lines. Each SA gets class write if it
// carries every key it needs, and class read if it names a non-AEAD
// cipher's integrity transform but leaves its key empty (decrypt only; the
// transform says how long the ICV is). A line that names no integrity
// transform for a non-AEAD cipher is refused: ESP without integrity is
// forbidden (RFC 8221), and a read gateway could not find the ICV.
func ParseESPSA(r io.Reader, name string) ([]ipsec.Config, error) {
	return strict(parseESPSA(r, name))
}

// parseESPSA reads esp_sa lines, skipping bad ones: it returns the good
// SAs, an error for each bad line, and an error that ends the file (an
// unreadable line).
func parseESPSA(r io.Reader, name string) (out []ipsec.Config, bad []error, fatal error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), keyval.MaxLine)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		c, err := parseESPSALine(line)
		if err != nil {
			err.File, err.Line = name, n
			bad = append(bad, err)
			continue
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return out, bad, &Error{File: name, Line: n + 1, Err: err}
	}
	return out, bad, nil
}

var espsaFields = []string{"protocol", "source", "destination", "spi", "encryption", "encryption key", "authentication", "authentication key"}

func parseESPSALine(line string) (ipsec.Config, *Error) {
	c := ipsec.Config{Proto: ipsec.ESP, Mode: ipsec.ModeAny, Class: ipsec.ClassWrite, TS: ipsec.Selector{Proto: ipsec.ProtoAny}}
	f, err := splitUAT(line)
	if err != nil {
		return c, &Error{Err: err}
	}
	if len(f) < len(espsaFields) {
		return c, &Error{Err: fmt.Errorf("%d fields, want %d (%s)", len(f), len(espsaFields), strings.Join(espsaFields, ", "))}
	}
	bad := func(i int, err error) *Error { return &Error{Field: espsaFields[i], Err: err} }
	switch strings.ToLower(f[0]) {
	case "ipv4", "ipv6", "any", "*":
	default:
		return c, bad(0, fmt.Errorf("%q: want IPv4, IPv6 or Any", f[0]))
	}
	if c.Src, err = parseAddr(f[1]); err != nil {
		return c, bad(1, err)
	}
	if c.Dst, err = parseAddr(f[2]); err != nil {
		return c, bad(2, err)
	}
	spi, err := strconv.ParseUint(f[3], 0, 32)
	if err != nil || spi < 256 {
		return c, bad(3, fmt.Errorf("%q: want a hex SPI ≥ 0x100", f[3]))
	}
	c.SPI = uint32(spi)
	var ok bool
	if c.Enc, ok = wsEnc[wsName(f[4])]; !ok {
		return c, bad(4, fmt.Errorf("%q: not supported", f[4]))
	}
	if c.EncKey, err = parseHex(f[5]); err != nil {
		return c, bad(5, err)
	}
	if c.Integ, ok = wsInteg[wsName(f[6])]; !ok {
		return c, bad(6, fmt.Errorf("%q: not supported", f[6]))
	}
	if c.IntegKey, err = parseHex(f[7]); err != nil {
		return c, bad(7, err)
	}
	switch {
	case c.Enc.AEAD() && c.Integ != ipsec.IntegNone:
		return c, bad(6, fmt.Errorf("%q: %v authenticates itself and takes NULL authentication", f[6], c.Enc))
	case c.Enc.AEAD() && len(c.EncKey) == 0:
		return c, bad(5, fmt.Errorf("empty: an AEAD SA is write class only (its key both decrypts and forges)"))
	case !c.Enc.AEAD() && c.Integ == ipsec.IntegNone:
		return c, bad(6, fmt.Errorf("NULL with %v: ESP without integrity is not supported (RFC 8221); for class read name the SA's authentication and leave its key empty", c.Enc))
	case !c.Enc.AEAD() && len(c.IntegKey) == 0:
		c.Class = ipsec.ClassRead // the transform named, its key withheld: decrypt only
	}
	return c, nil
}

// splitUAT splits a UAT line into fields: each is "quoted" (with \\, \"
// and \xNN escapes) or bare, separated by commas.
func splitUAT(line string) ([]string, error) {
	var out []string
	for i := 0; ; {
		var sb strings.Builder
		if i < len(line) && line[i] == '"' {
			i++
			for {
				if i >= len(line) {
					return nil, fmt.Errorf("unterminated quote in field %d", len(out)+1)
				}
				ch := line[i]
				if ch == '"' {
					i++
					break
				}
				if ch == '\\' && i+1 < len(line) {
					if line[i+1] == 'x' && i+3 < len(line) {
						v, err := strconv.ParseUint(line[i+2:i+4], 16, 8)
						if err != nil {
							return nil, fmt.Errorf("bad escape in field %d", len(out)+1)
						}
						sb.WriteByte(byte(v))
						i += 4
						continue
					}
					sb.WriteByte(line[i+1])
					i += 2
					continue
				}
				sb.WriteByte(ch)
				i++
			}
		} else {
			j := strings.IndexByte(line[i:], ',')
			if j < 0 {
				j = len(line) - i
			}
			sb.WriteString(strings.TrimSpace(line[i : i+j]))
			i += j
		}
		out = append(out, sb.String())
		if len(out) > 64 {
			return nil, fmt.Errorf("more than 64 fields")
		}
		for i < len(line) && line[i] == ' ' {
			i++
		}
		if i >= len(line) {
			return out, nil
		}
		if line[i] != ',' {
			return nil, fmt.Errorf("want ',' after field %d", len(out))
		}
		i++
	}
}

// WriteESPSA writes SAs as Wireshark esp_sa lines, for tshark. SAs whose
// transform Wireshark 4.0 cannot decrypt (ChaCha20-Poly1305) and AH SAs
// are skipped and returned.
func WriteESPSA(w io.Writer, sas []ipsec.Config) (skipped []ipsec.Config, err error) {
	bw := bufio.NewWriter(w)
	for _, c := range sas {
		en, ok1 := wsEncName[c.Enc]
		in, ok2 := wsIntegName[c.Integ]
		if c.Proto != ipsec.ESP || !ok1 || !ok2 {
			skipped = append(skipped, c)
			continue
		}
		fam := "IPv4"
		if c.Dst.Is6() || c.Src.Is6() {
			fam = "IPv6"
		}
		ik := ""
		if len(c.IntegKey) > 0 {
			ik = fmt.Sprintf("0x%x", c.IntegKey)
		}
		fmt.Fprintf(bw, "%q,%q,%q,\"0x%08x\",%q,\"0x%x\",%q,%q\n", fam, addr(c.Src), addr(c.Dst), c.SPI, en, c.EncKey, in, ik)
	}
	return skipped, bw.Flush()
}
