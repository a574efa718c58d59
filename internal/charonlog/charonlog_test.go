package charonlog

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// TestAgainstEspSa checks the keys parsed from both peers' logs against
// the esp_sa lines shared/interop/charonlog2espsa.py wrote for the same
// runs (ipsec/testdata/strongswan/*/esp_sa).
func TestAgainstEspSa(t *testing.T) {
	for _, p := range []string{"aes128-sha256", "aes256gcm16", "chacha20poly1305"} {
		want, err := safile.Load(filepath.Join("../../ipsec/testdata/strongswan", p, "sa.native"))
		if err != nil {
			t.Fatal(err)
		}
		for _, side := range []string{"left", "right"} {
			f, err := os.Open(filepath.Join("testdata", p+"-"+side+".log"))
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(f, p)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 {
				t.Fatalf("%s %s: %d SAs", p, side, len(got))
			}
			for _, g := range got {
				var w *ipsec.Config
				for i := range want {
					if want[i].SPI == g.SPI {
						w = &want[i]
					}
				}
				if w == nil || g.Src != w.Src || g.Dst != w.Dst || g.Enc != w.Enc || g.Integ != w.Integ ||
					!bytes.Equal(g.EncKey, w.EncKey) || !bytes.Equal(g.IntegKey, w.IntegKey) {
					t.Fatalf("%s %s spi %#x: got %+v, want %+v", p, side, g.SPI, g, w)
				}
				if _, err := ipsec.NewEntry(g); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// FuzzParse: charon logs are text anyone can write; never panic.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"aes128-sha256-left.log", "rekey-right.log"} {
		b, _ := os.ReadFile("testdata/" + name)
		f.Add(string(b))
	}
	f.Add("00:00:00 04[CFG] selected proposal: ESP:AES_GCM_16_128/NO_EXT_SEQ\n00:00:00 04[CHD] registering outbound ESP SA\n" +
		"00:00:00 04[CHD]   SPI 0x9d74c50f, src 10.77.2.1 dst 10.77.1.1\n00:00:00 10[CHD] adding outbound ESP SA\n" +
		"00:00:00 10[CHD]   SPI 0x9d74c50f, src 10.77.2.1 dst 10.77.1.1\n")
	f.Add("00:00:00 01[CHD]    0: ZZ\n")
	f.Fuzz(func(t *testing.T, s string) {
		cfgs, err := Parse(strings.NewReader(s), "fuzz")
		if err != nil {
			return
		}
		for _, c := range cfgs {
			ipsec.NewEntry(c)
		}
	})
}

// TestParseLive: a CHILD_SA rekeyed away leaves ParseLive, which the
// agent reads; Parse (for decrypting old captures) keeps it.
func TestParseLive(t *testing.T) {
	log, err := os.ReadFile("testdata/aes256gcm16-left.log")
	if err != nil {
		t.Fatal(err)
	}
	all, err := Parse(bytes.NewReader(log), "left")
	if err != nil || len(all) != 2 {
		t.Fatalf("Parse: %d SAs, %v", len(all), err)
	}
	if live, err := ParseLive(bytes.NewReader(log), "left"); err != nil || len(live) != 2 {
		t.Fatalf("ParseLive before the rekey: %d SAs, %v", len(live), err)
	}
	rekeyed := append(append([]byte(nil), log...), []byte("17:36:44 09[CHD] CHILD_SA pep{1} state change: INSTALLED => REKEYING\n"+
		"17:36:44 09[CHD] CHILD_SA pep{1} state change: REKEYING => REKEYED\n")...)
	if live, err := ParseLive(bytes.NewReader(rekeyed), "left"); err != nil || len(live) != 0 {
		t.Fatalf("ParseLive after the rekey: %d SAs, %v", len(live), err)
	}
	if all, _ := Parse(bytes.NewReader(rekeyed), "left"); len(all) != 2 {
		t.Fatal("Parse dropped a rekeyed SA")
	}
}

// TestRekeyLogs: two charons' logs of one run with two CHILD_SA rekeys,
// one from each end (testbed TestGatewaySecServerRekey with
// ESPEP_KEEP_CHARON_LOGS). The responder of a rekey registers its
// outbound SA and adds it after the old SA's delete, maybe from another
// thread: that SA is read from the registration, once. Both logs give
// the same six SAs with the same keys, and ParseLive the last pair only.
func TestRekeyLogs(t *testing.T) {
	parse := func(side string, live bool) map[uint32]ipsec.Config {
		t.Helper()
		f, err := os.Open("testdata/rekey-" + side + ".log")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var cfgs []ipsec.Config
		if live {
			cfgs, err = ParseLive(f, side)
		} else {
			cfgs, err = Parse(f, side)
		}
		if err != nil {
			t.Fatal(err)
		}
		m := map[uint32]ipsec.Config{}
		for _, c := range cfgs {
			if _, dup := m[c.SPI]; dup {
				t.Fatalf("%s: spi %#x twice", side, c.SPI)
			}
			m[c.SPI] = c
		}
		return m
	}
	left, right := parse("left", false), parse("right", false)
	if len(left) != 6 || len(right) != 6 {
		t.Fatalf("%d SAs on the left, %d on the right: want three pairs each", len(left), len(right))
	}
	for spi, l := range left {
		r, ok := right[spi]
		if !ok || l.Src != r.Src || l.Dst != r.Dst || l.Enc != r.Enc || !bytes.Equal(l.EncKey, r.EncKey) {
			t.Fatalf("spi %#x: left %+v, right %+v", spi, l, r)
		}
	}
	liveL, liveR := parse("left", true), parse("right", true)
	if len(liveL) != 2 || len(liveR) != 2 {
		t.Fatalf("live: %d on the left, %d on the right", len(liveL), len(liveR))
	}
	for spi := range liveL {
		if _, ok := liveR[spi]; !ok {
			t.Fatalf("the two ends' live pairs differ at %#x", spi)
		}
	}
}
