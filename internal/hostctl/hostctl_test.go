package hostctl

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

func installLine(t testing.TB, n int) []byte {
	var sas []ipsec.Config
	for i := range n {
		sas = append(sas, ipsec.Config{SPI: uint32(0x100 + i), Proto: ipsec.ESP, Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"),
			Mode: ipsec.Transport, Enc: ipsec.EncAESGCM16, EncKey: bytes.Repeat([]byte{7}, 20), Class: ipsec.ClassWrite})
	}
	var b strings.Builder
	if err := safile.WriteNative(&b, sas); err != nil {
		t.Fatal(err)
	}
	line, _ := json.Marshal(Request{Version: Version, Op: OpInstall, Policy: "p", SAs: b.String()})
	return line
}

// TestParseRequest: the operations, and the refusals a host gives.
func TestParseRequest(t *testing.T) {
	if r, sas, err := ParseRequest(installLine(t, 2)); err != nil || r.Op != OpInstall || len(sas) != 2 || sas[1].SPI != 0x101 {
		t.Fatalf("install: %v %v %v", r, sas, err)
	}
	if r, _, err := ParseRequest([]byte(`{"v":1,"op":"pairs"}`)); err != nil || r.Op != OpPairs {
		t.Fatalf("pairs: %v", err)
	}
	for line, want := range map[string]string{
		`{"v":1,"op":"sas","x":1}`:     "unknown field",
		`{"v":0,"op":"sas"}`:           "protocol version 0",
		`{"v":1,"op":"flush"}`:         "unknown operation",
		`{"v":1,"op":"install"}`:       "no policy",
		string(installLine(t, 1)):      "1 SAs: want the pair",
		string(installLine(t, 3)):      "3 SAs: want the pair",
		`[1,2]`:                        "request",
		strings.Repeat(" ", MaxLine+1): "request of",
	} {
		if _, _, err := ParseRequest([]byte(line)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.60q: %v, want %q", line, err, want)
		}
	}
}

// FuzzParseRequest: a control request never panics the host, and an
// install that parses carries exactly a pair.
func FuzzParseRequest(f *testing.F) {
	f.Add(installLine(f, 2))
	f.Add(installLine(f, 1))
	f.Add([]byte(`{"v":1,"op":"sas"}`))
	f.Add([]byte(`{"v":1,"op":"pairs"}`))
	f.Add([]byte(`{"v":1,"op":"install","policy":"p","sas":"espep-sa 1\n[sa]\nspi = 0x1\n"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		r, sas, err := ParseRequest(line)
		if err == nil && r.Op == OpInstall && len(sas) != 2 {
			t.Fatalf("install of %d SAs accepted", len(sas))
		}
	})
}
