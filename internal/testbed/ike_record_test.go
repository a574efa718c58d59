package testbed

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/espep/espep/internal/pcapio"
)

var ikeRecord = flag.String("ikerecord", "", "record strongSwan's IKEv2 messages (IKE_SA_INIT, IKE_AUTH, a CHILD_SA rekey) into this directory, as vectors for internal/ikev2")

// TestRecordIKE records the IKE messages two strongSwan peers exchange —
// IKE_SA_INIT, IKE_AUTH, a CREATE_CHILD_SA rekey of the CHILD_SA — as
// the vectors of internal/ikev2 (one file per message, the UDP payload
// without the non-ESP marker), with the charon logs that name their keys
// beside them. Only with -ikerecord DIR:
//
//	go test ./internal/testbed -run TestRecordIKE -ikerecord ../ikev2/testdata/strongswan -v
func TestRecordIKE(t *testing.T) {
	if *ikeRecord == "" {
		t.Skip("a recording tool: -ikerecord DIR")
	}
	needStrongSwan(t)
	b := ForTest(t)
	s, err := NewStrongSwan(b, espepBin, t.TempDir())
	must(t, err)
	capPath := filepath.Join(s.Dir, "ike.pcap")
	dump, err := b.Start(s.GW, "tcpdump", "-U", "--immediate-mode", "-ni", "gr", "-w", capPath, "udp port 500 or udp port 4500")
	must(t, err)
	must(t, b.WaitFile(capPath, 5*time.Second))
	must(t, s.StartCharon("aes128gcm16"))
	out, err := exec.Command("swanctl", "--rekey", "--child", "pep", "--uri", s.vici("left")).CombinedOutput()
	if err != nil {
		t.Fatalf("swanctl --rekey: %v\n%s", err, out)
	}
	time.Sleep(time.Second)
	dump.Stop()
	must(t, os.MkdirAll(*ikeRecord, 0o755))
	f, err := os.Open(capPath)
	must(t, err)
	defer f.Close()
	r, err := pcapio.NewReader(f)
	must(t, err)
	n := 0
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		must(t, err)
		msg, ok := ikeOf(rec.Data, r.LinkType)
		if !ok {
			continue
		}
		n++
		must(t, os.WriteFile(filepath.Join(*ikeRecord, fmt.Sprintf("msg%02d.bin", n)), msg, 0o644))
	}
	for _, side := range []string{"left", "right"} {
		log, err := os.ReadFile(s.CharonLog(side))
		must(t, err)
		must(t, os.WriteFile(filepath.Join(*ikeRecord, side+"-charon.log"), log, 0o644))
	}
	t.Logf("%d IKE messages in %s", n, *ikeRecord)
}

// ikeOf is the IKE message in an Ethernet frame of UDP to or from port 500
// or 4500 (after the 4500 port's non-ESP marker), if it holds one.
func ikeOf(frame []byte, link uint32) ([]byte, bool) {
	if link != 1 || len(frame) < 14+20+8 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
		return nil, false
	}
	ip := frame[14:]
	ihl := int(ip[0]&0xf) * 4
	if ip[9] != 17 || len(ip) < ihl+8 {
		return nil, false
	}
	udp := ip[ihl:]
	sp, dp := binary.BigEndian.Uint16(udp), binary.BigEndian.Uint16(udp[2:])
	payload := udp[8:]
	switch {
	case sp == 500 || dp == 500:
		return payload, true
	case (sp == 4500 || dp == 4500) && len(payload) >= 4 && binary.BigEndian.Uint32(payload) == 0:
		return payload[4:], true
	}
	return nil, false
}
