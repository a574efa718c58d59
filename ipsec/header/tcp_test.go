package header

import "testing"

func TestTCPOptions(t *testing.T) {
	opts := []byte{
		TCPOptMSS, 4, 0x05, 0xb4,
		TCPOptNop, TCPOptWS, 3, 15, // clamped to 14
		TCPOptSACKPerm, 2,
		TCPOptTimestamp, 10, 0, 0, 0, 7, 0, 0, 0, 9,
		TCPOptNop, TCPOptNop, TCPOptSACK, 18, 0, 0, 0, 10, 0, 0, 0, 20, 0, 0, 0, 30, 0, 0, 0, 40,
		TCPOptEnd,
	}
	var o TCPOptions
	if err := ParseTCPOptions(opts, &o); err != nil {
		t.Fatal(err)
	}
	if !o.HasMSS || o.MSS != 1460 || !o.HasWS || o.WS != 14 || !o.SACKPermitted || !o.HasTS || o.TSVal != 7 || o.TSEcr != 9 ||
		o.NSACK != 2 || o.SACK[1] != (SACKBlock{30, 40}) {
		t.Fatalf("%+v", o)
	}
	for _, bad := range [][]byte{{TCPOptMSS}, {TCPOptMSS, 3, 0}, {TCPOptSACK, 9, 0, 0, 0, 0, 0, 0, 0}, {TCPOptTimestamp, 8, 0, 0, 0, 0, 0, 0}, {99, 1}} {
		if err := ParseTCPOptions(bad, &o); err == nil {
			t.Errorf("%x accepted", bad)
		}
	}
	seg := make([]byte, 24)
	seg[12] = 6 << 4
	if _, err := ParseTCP(seg); err != nil {
		t.Fatal(err)
	}
	seg[12] = 7 << 4
	if _, err := ParseTCP(seg); err == nil {
		t.Fatal("data offset beyond the segment accepted")
	}
}
