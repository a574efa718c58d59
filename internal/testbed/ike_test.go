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
	"strings"
	"testing"
	"time"

	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/internal/pcapio"
)

var ikeRecord = flag.String("ikerecord", "", "TestStrongSwanIKE: also write strongSwan's IKEv2 messages and charon logs into this directory (the vectors of internal/ikev2)")

// TestStrongSwanIKE: the IKEv2 messages two strongSwan peers exchange —
// IKE_SA_INIT, IKE_AUTH, a CREATE_CHILD_SA rekey of the CHILD_SA, the
// INFORMATIONAL that deletes the old one, each request and response —
// captured between them and read by internal/ikev2: every one parses and
// round-trips, in that order, on one IKE SA (retransmissions and liveness
// checks allowed beside them). With -ikerecord DIR it also
// writes them (one file per message: the UDP payload without the non-ESP
// marker) and both charon logs there, as the vectors of internal/ikev2:
//
//	go test ./internal/testbed -run TestStrongSwanIKE -ikerecord $PWD/internal/ikev2/testdata/strongswan -v
func TestStrongSwanIKE(t *testing.T) {
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
	dir := *ikeRecord
	if dir == "" {
		dir = t.TempDir()
	}
	must(t, os.MkdirAll(dir, 0o755))
	f, err := os.Open(capPath)
	must(t, err)
	defer f.Close()
	r, err := pcapio.NewReader(f)
	must(t, err)
	var msgs [][]byte
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
		msgs = append(msgs, append([]byte(nil), msg...))
		must(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("msg%02d.bin", len(msgs))), msg, 0o644))
	}
	for _, side := range []string{"left", "right"} {
		log, err := os.ReadFile(s.CharonLog(side))
		must(t, err)
		must(t, os.WriteFile(filepath.Join(dir, side+"-charon.log"), log, 0o644))
	}
	t.Logf("%d IKE messages in %s", len(msgs), dir)
	// Every message parses and round-trips; the exchanges come in order.
	// Under load a peer may retransmit, or a liveness check may pass:
	// other messages may come between.
	var seen []string
	var spi uint64
	for i, b := range msgs {
		m, err := ikev2.Parse(b)
		if err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
		again, err := m.Append(nil)
		if err != nil || string(again) != string(b) {
			t.Fatalf("message %d does not round-trip: %v", i+1, err)
		}
		seen = append(seen, fmt.Sprintf("%d/%v", m.Exchange, m.Response()))
		if i == 0 {
			spi = m.SPIi
		} else if m.SPIi != spi {
			t.Fatalf("message %d on IKE SA %#x, not %#x", i+1, m.SPIi, spi)
		}
	}
	want := []string{"34/false", "34/true", "35/false", "35/true", "36/false", "36/true"} // SA_INIT, AUTH, CREATE_CHILD_SA
	k := 0
	for _, kind := range seen {
		if k < len(want) && kind == want[k] {
			k++
		}
	}
	if k < len(want) {
		t.Fatalf("exchanges %v: want %s among them, in that order", seen, strings.Join(want, " "))
	}
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
