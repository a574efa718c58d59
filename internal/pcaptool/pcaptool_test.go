package pcaptool

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/espep/espep/ipsec/safile"
)

const capDir = "../../ipsec/testdata/strongswan/aes128-sha256/"

// FuzzDecrypt runs arbitrary captures (seeded with a real strongSwan one)
// through decrypt: it must never panic and never write more packets than
// it read.
func FuzzDecrypt(f *testing.F) {
	if b, err := os.ReadFile(capDir + "cap.pcap"); err == nil {
		f.Add(b)
	}
	sad, err := safile.LoadSAD(capDir + "esp_sa")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		st, err := Decrypt(bytes.NewReader(in), &out, sad)
		if err != nil && st.Packets == 0 {
			return
		}
		if st.Opened+st.Decrypted+st.ICVFailed+st.Replayed+st.UnknownSPI+st.NoKeys+st.Dummy+st.Malformed+st.IKE+st.Keepalive+st.Fragments+st.NotIPsec != st.Packets {
			t.Fatalf("counters do not add up: %+v", st)
		}
	})
}

func TestDecryptSummaryAddsUp(t *testing.T) {
	sad, err := safile.LoadSAD(capDir + "esp_sa")
	if err != nil {
		t.Fatal(err)
	}
	in, _ := os.Open(capDir + "cap.pcap")
	defer in.Close()
	st, err := Decrypt(in, io.Discard, sad)
	if err != nil || st.Opened < 10 || st.Opened+st.IKE+st.NotIPsec != st.Packets {
		t.Fatalf("%v %v", err, st)
	}
}
