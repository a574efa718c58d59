package netem

import (
	"io"
	"sync"
	"time"

	"github.com/espep/espep/internal/pcapio"
)

// PcapCapture returns a Config.Capture function that writes every
// delivered packet to w as a pcap file of the given link type
// (pcapio.LinkRaw for IP packets, pcapio.LinkEthernet for frames), and a
// flush function to call when done.
func PcapCapture(w io.Writer, linkType uint32) (capture func(time.Time, []byte), flush func() error, err error) {
	pw, err := pcapio.NewWriter(w, linkType)
	if err != nil {
		return nil, nil, err
	}
	var mu sync.Mutex
	capture = func(t time.Time, pkt []byte) {
		mu.Lock()
		pw.Write(t, pkt, len(pkt))
		mu.Unlock()
	}
	flush = func() error {
		mu.Lock()
		defer mu.Unlock()
		return pw.Flush()
	}
	return capture, flush, nil
}
