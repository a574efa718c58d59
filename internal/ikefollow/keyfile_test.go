package ikefollow

import (
	"bytes"
	"strings"
	"testing"
)

// TestKeyFileRoundTrip: the keys charon logged (AES-CBC + HMAC and
// AES-GCM IKE SAs), with and without SPIs, written and read back alike.
func TestKeyFileRoundTrip(t *testing.T) {
	keys := append(ikeKeys(t, load(t, "follow").left), ikeKeys(t, load(t, "follow-pfs").left)...)
	keys[1].SPIi, keys[1].SPIr = 0x0102030405060708, 0x1112131415161718
	b := AppendKeyFile(nil, keys...)
	got, err := ParseKeyFile(bytes.NewReader(b), "keys")
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if len(got) != len(keys) {
		t.Fatalf("%d key sets back, wrote %d", len(got), len(keys))
	}
	for i := range keys {
		if string(AppendKeyFile(nil, got[i])) != string(AppendKeyFile(nil, keys[i])) {
			t.Errorf("key set %d differs", i)
		}
	}
}

// TestKeyFileMistakes: each mistake is an error naming the line and field.
func TestKeyFileMistakes(t *testing.T) {
	good := string(AppendKeyFile(nil, ikeKeys(t, load(t, "follow").left)[0]))
	for _, c := range []struct{ name, file, want string }{
		{"magic", strings.Replace(good, "espep-ike 1", "espep-sa 1", 1), ":1:"},
		{"section", strings.Replace(good, "[ike]", "[sa]", 1), "unknown section"},
		{"prf", strings.Replace(good, "prf = hmac-sha2-256", "prf = md5", 1), "field prf"},
		{"short key", strings.Replace(good, "sk-ei = 0x", "sk-ei = 0x00", 1), "SK_e"},
		{"no sk-d", strings.Replace(good, "sk-d =", "# sk-d =", 1), "SK_d"},
		{"one spi", strings.Replace(good, "[ike]", "[ike]\nspi-i = 0x1", 1), "spi-r"},
		{"unknown", strings.Replace(good, "[ike]", "[ike]\nsk-pi = 0x00", 1), "field sk-pi"},
		{"outside", "espep-ike 1\nprf = hmac-sha1\n", "outside"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseKeyFile(strings.NewReader(c.file), "keys")
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "keys:") {
				t.Fatalf("error %v, want one at keys:LINE mentioning %q", err, c.want)
			}
		})
	}
}

// FuzzParseKeyFile: any file is keys or an error, never a panic; what is
// read writes back to the same keys.
func FuzzParseKeyFile(f *testing.F) {
	f.Add(string(AppendKeyFile(nil, ikeKeys(f, load(f, "follow").left)...)))
	f.Add(string(AppendKeyFile(nil, ikeKeys(f, load(f, "follow-pfs").left)...)))
	f.Add("espep-ike 1\n[ike]\nspi-i = 0x1\nspi-r = 0x2\n")
	f.Fuzz(func(t *testing.T, s string) {
		keys, err := ParseKeyFile(strings.NewReader(s), "f")
		if err != nil {
			return
		}
		again, err := ParseKeyFile(bytes.NewReader(AppendKeyFile(nil, keys...)), "again")
		if err != nil || len(again) != len(keys) {
			t.Fatalf("read back: %d of %d, %v", len(again), len(keys), err)
		}
	})
}
