package charonlog

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/espep/espep/internal/ikev2"
)

// TestParseIKEBothEnds: both charons of a recording (internal/testbed
// TestStrongSwanIKE, "follow": an IKE SA and its rekey) logged the same
// IKE SA keys — the initiator's derived in the thread that selected the
// proposal, the responder's in another — and ParseIKE reads them alike.
func TestParseIKEBothEnds(t *testing.T) {
	var got [2][]ikev2.Keys
	for i, side := range []string{"left", "right"} {
		p := filepath.Join("..", "ikev2", "testdata", "follow", side+"-charon.log")
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		got[i], err = ParseIKE(f, p)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(got[0]) != 2 || len(got[1]) != 2 {
		t.Fatalf("%d and %d IKE key sets, want 2 each", len(got[0]), len(got[1]))
	}
	for i := range got[0] {
		a, b := got[0][i], got[1][i]
		if a.PRF != ikev2.PRFHMACSHA2256 || a.Encr != ikev2.EncrAESCBC || a.Integ != ikev2.IntegHMACSHA2256128 ||
			a.PRF != b.PRF || a.Encr != b.Encr || a.Integ != b.Integ {
			t.Errorf("key set %d: transforms %d/%d/%d and %d/%d/%d", i, a.PRF, a.Encr, a.Integ, b.PRF, b.Encr, b.Integ)
		}
		for j, pair := range [][2][]byte{{a.D, b.D}, {a.Ai, b.Ai}, {a.Ar, b.Ar}, {a.Ei, b.Ei}, {a.Er, b.Er}} {
			if len(pair[0]) == 0 || !bytes.Equal(pair[0], pair[1]) {
				t.Errorf("key set %d key %d: %x and %x", i, j, pair[0], pair[1])
			}
		}
	}
	if bytes.Equal(got[0][0].D, got[0][1].D) {
		t.Error("the rekeyed IKE SA has the same SK_d")
	}
	// Each key set comes with the IKE SA's two addresses.
	f, err := os.Open(filepath.Join("..", "ikev2", "testdata", "follow", "right-charon.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sas, err := ParseIKESAs(f, "right")
	if err != nil {
		t.Fatal(err)
	}
	for i, sa := range sas {
		p := map[string]bool{sa.Peers[0].String(): true, sa.Peers[1].String(): true}
		if !p["10.77.1.1"] || !p["10.77.2.1"] {
			t.Errorf("key set %d: peers %v", i, sa.Peers)
		}
	}
}

// FuzzParseIKE: any log gives IKE SAs whose keys are valid, or an error;
// never a panic.
func FuzzParseIKE(f *testing.F) {
	for _, name := range []string{"follow", "follow-pfs"} {
		b, err := os.ReadFile(filepath.Join("..", "ikev2", "testdata", name, "left-charon.log"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add("00:00:00 04[CFG] selected proposal: IKE:AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519\n" +
		"00:00:00 05[IKE] Sk_d secret => 2 bytes @ 0x0\n00:00:00 05[IKE]    0: 7E 07  ~.\n00:00:00 05[IKE] Sk_pi secret => 0 bytes\n")
	f.Fuzz(func(t *testing.T, s string) {
		sas, err := ParseIKESAs(strings.NewReader(s), "fuzz")
		if err != nil {
			return
		}
		for _, sa := range sas {
			if err := sa.Keys.Validate(); err != nil {
				t.Fatalf("invalid keys returned: %v", err)
			}
		}
	})
}
