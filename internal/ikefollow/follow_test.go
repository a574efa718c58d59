package ikefollow

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/espep/espep/internal/charonlog"
	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/internal/pcapio"
	"github.com/espep/espep/ipsec"
)

// vectors is a recording of internal/testbed TestStrongSwanIKE: the IKE
// messages between two strongSwan peers as a gateway between them saw
// them, and both charon logs (with the IKE and CHILD_SA keys).
type vectors struct {
	packets     []Packet
	left, right string // charon log paths
}

func load(t testing.TB, name string) vectors {
	t.Helper()
	dir := filepath.Join("..", "ikev2", "testdata", name)
	link, frames, err := pcapio.ReadFile(filepath.Join(dir, "ike.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	v := vectors{left: filepath.Join(dir, "left-charon.log"), right: filepath.Join(dir, "right-charon.log")}
	for _, fr := range frames {
		if p, ok := PacketOfFrame(link, fr); ok {
			v.packets = append(v.packets, p)
		}
	}
	if len(v.packets) < 8 {
		t.Fatalf("%s: %d IKE messages", name, len(v.packets))
	}
	return v
}

func ikeKeys(t testing.TB, log string) []ikev2.Keys {
	t.Helper()
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ks, err := charonlog.ParseIKE(f, log)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func childSAs(t testing.TB, log string) []ipsec.Config {
	t.Helper()
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cs, err := charonlog.Parse(f, log)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// follow feeds every packet to a follower given keys, and gathers what it
// returns.
func follow(t testing.TB, f *Follower, ps []Packet, keys []ikev2.Keys) Result {
	t.Helper()
	var all Result
	add := func(r Result) {
		all.Created = append(all.Created, r.Created...)
		all.Deleted = append(all.Deleted, r.Deleted...)
		all.PFS = append(all.PFS, r.PFS...)
	}
	for _, k := range keys {
		r, err := f.AddKeys(k)
		if err != nil {
			t.Fatal(err)
		}
		add(r)
	}
	for _, p := range ps {
		add(f.Observe(p))
	}
	return all
}

// sameSAs checks that the follower derived exactly the SAs charon logged:
// SPI, addresses, transforms and keys.
func sameSAs(t *testing.T, got []ipsec.Config, want []ipsec.Config) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("derived %d SAs, charon installed %d", len(got), len(want))
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			if g.SPI != w.SPI || g.Dst != w.Dst {
				continue
			}
			found = true
			if g.Src != w.Src || g.Enc != w.Enc || g.Integ != w.Integ || g.ESN != w.ESN || g.Mode != w.Mode ||
				!bytes.Equal(g.EncKey, w.EncKey) || !bytes.Equal(g.IntegKey, w.IntegKey) {
				t.Errorf("spi %#08x: derived %v→%v %v/%v keys %x %x, charon %v→%v %v/%v keys %x %x", w.SPI,
					g.Src, g.Dst, g.Enc, g.Integ, g.EncKey, g.IntegKey, w.Src, w.Dst, w.Enc, w.Integ, w.EncKey, w.IntegKey)
			}
			// The peers' ESP is in UDP 4500 (charon with kernel-libipsec
			// fakes a NAT to have it so): NAT detection says so.
			if g.EncapSrcPort != 4500 || g.EncapDstPort != 4500 {
				t.Errorf("spi %#08x: UDP encapsulation %d→%d, want 4500→4500", w.SPI, g.EncapSrcPort, g.EncapDstPort)
			}
			if g.TS.Local.From != g.TS.Local.To || g.TS.Remote.From != g.TS.Remote.To || !g.TS.Local.From.IsValid() {
				t.Errorf("spi %#08x: selectors %+v, want the peers' two /32s", w.SPI, g.TS)
			}
		}
		if !found {
			t.Errorf("charon's SA spi %#08x dst %v was not derived", w.SPI, w.Dst)
		}
	}
}

// TestStrongSwanRekeys: given only the IKE SA keys (from the initiator's
// charon log, as an agent would delegate them), the follower derives
// every CHILD_SA two strongSwan peers created — IKE_AUTH's, a rekey from
// each side, and after the IKE SA was rekeyed a rekey on the new one —
// exactly as both charons logged them (SPIs, addresses, AES-CBC +
// HMAC-SHA-256 keys in RFC 7296 §2.17 order), binds the second key set
// to the IKE SA that replaced the first (by the message it verifies), and
// reads the deletes of the SAs rekeyed away.
func TestStrongSwanRekeys(t *testing.T) {
	v := load(t, "follow")
	keys := ikeKeys(t, v.left)
	if len(keys) != 2 {
		t.Fatalf("%d IKE key sets in the log, want the first IKE SA's and its rekey's", len(keys))
	}
	f := New(Config{})
	got := follow(t, f, v.packets, keys)
	sameSAs(t, got.Created, childSAs(t, v.left))
	sameSAs(t, got.Created, childSAs(t, v.right))
	st := f.Stats()
	if st.Children != 4 || st.Bound != 2 || st.IKERekeys != 1 || st.Integrity != 0 || st.Malformed != 0 || st.PFS != 0 || st.Missed != 0 {
		t.Errorf("stats %+v", st)
	}
	// The three rekeys deleted the SAs before them, both halves; the IKE
	// SA's Delete (after its rekey) none: its CHILD_SAs had moved to the
	// new IKE SA, which holds the live two.
	if len(got.Deleted) != 6 {
		t.Errorf("deleted %v, want the 6 SAs of the 3 CHILD_SAs rekeyed away", got.Deleted)
	}
	f.mu.Lock()
	for _, sa := range f.sas {
		if sa.keys != nil && len(sa.children) != 2 {
			t.Errorf("IKE SA %#x holds %d CHILD_SA halves, want the live 2", sa.spis.i, len(sa.children))
		}
	}
	f.mu.Unlock()
	for _, c := range got.Created {
		c.WipeKeys()
	}
}

// TestStrongSwanPFS: with PFS on the CHILD_SA, IKE_AUTH's CHILD_SA (no KE
// there) is derived; the rekey's carries a KE payload and is reported for
// another source, not guessed. The IKE SA's SK payloads are AES-GCM.
func TestStrongSwanPFS(t *testing.T) {
	v := load(t, "follow-pfs")
	keys := ikeKeys(t, v.right)
	if len(keys) != 1 || keys[0].Encr != ikev2.EncrAESGCM16 {
		t.Fatalf("keys %+v", keys)
	}
	f := New(Config{})
	got := follow(t, f, v.packets, keys)
	want := childSAs(t, v.left)
	if len(want) != 4 {
		t.Fatalf("charon installed %d SAs, want 4", len(want))
	}
	sameSAs(t, got.Created, want[:2])
	st := f.Stats()
	if st.Children != 1 || st.PFS != 1 || len(got.PFS) != 1 || st.Integrity != 0 {
		t.Errorf("stats %+v, PFS %v", st, got.PFS)
	}
	if p := got.PFS[0]; p != [2]netip.Addr{netip.MustParseAddr("10.77.1.1"), netip.MustParseAddr("10.77.2.1")} {
		t.Errorf("PFS pair %v", p)
	}
}

// TestStrongSwanChaCha: ChaCha20-Poly1305 for IKE (RFC 7634) and ESP:
// IKE_AUTH's CHILD_SA and a rekey's, as both charons installed them.
func TestStrongSwanChaCha(t *testing.T) {
	v := load(t, "follow-chacha")
	keys := ikeKeys(t, v.left)
	if len(keys) != 1 || keys[0].Encr != ikev2.EncrChaCha20Poly1305 {
		t.Fatalf("keys %+v", keys)
	}
	f := New(Config{})
	got := follow(t, f, v.packets, keys)
	sameSAs(t, got.Created, childSAs(t, v.left))
	sameSAs(t, got.Created, childSAs(t, v.right))
	if st := f.Stats(); st.Children != 2 || st.Integrity != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestKeysLate: the keys come after the messages (the delegation is slower
// than IKE): the messages were held, and are read when they come.
func TestKeysLate(t *testing.T) {
	v := load(t, "follow")
	keys := ikeKeys(t, v.left)
	f := New(Config{})
	var got Result
	for _, p := range v.packets {
		r := f.Observe(p)
		got.Created = append(got.Created, r.Created...)
	}
	if len(got.Created) != 0 {
		t.Fatalf("derived %d SAs without keys", len(got.Created))
	}
	r, err := f.AddKeys(keys[0])
	if err != nil {
		t.Fatal(err)
	}
	// MaxHeld (8) messages of the IKE SA were held: IKE_AUTH and the
	// two rekeys that followed.
	if st := f.Stats(); st.Held < 8 || st.Unkeyed == 0 || len(r.Created) != 6 {
		t.Fatalf("late keys: %d SAs derived from held messages, stats %+v", len(r.Created), st)
	}
	want := childSAs(t, v.left)
	sameSAs(t, r.Created, want[:6])
}

// TestKeysBySPI: keys given with their SPIs bind at once, without trying.
func TestKeysBySPI(t *testing.T) {
	v := load(t, "follow")
	keys := ikeKeys(t, v.left)
	m, err := ikev2.Parse(v.packets[1].Msg)
	if err != nil {
		t.Fatal(err)
	}
	keys[0].SPIi, keys[0].SPIr = m.SPIi, m.SPIr
	f := New(Config{})
	got := follow(t, f, v.packets, keys[:1])
	if len(got.Created) != 6 || f.Stats().Bound != 1 {
		t.Fatalf("%d SAs, stats %+v", len(got.Created), f.Stats())
	}
}

// TestForged: what does not verify changes nothing. A flipped bit in any
// encrypted message is an integrity failure; a forged IKE_SA_INIT
// response with another nonce makes IKE_AUTH's CHILD_SA missed, not
// derived from the wrong nonce; wrong keys bind to nothing.
func TestForged(t *testing.T) {
	v := load(t, "follow")
	keys := ikeKeys(t, v.left)
	t.Run("bit", func(t *testing.T) {
		f := New(Config{})
		var ps []Packet
		for _, p := range v.packets {
			m, _ := ikev2.Parse(p.Msg)
			if m.Exchange != ikev2.ExchangeSAInit {
				q := p
				q.Msg = append([]byte(nil), p.Msg...)
				q.Msg[len(q.Msg)-20] ^= 1
				ps = append(ps, q)
			}
			ps = append(ps, p)
		}
		got := follow(t, f, ps, keys)
		if st := f.Stats(); len(got.Created) != 8 || st.Integrity == 0 {
			t.Fatalf("%d SAs, stats %+v", len(got.Created), st)
		}
	})
	t.Run("nonce", func(t *testing.T) {
		f := New(Config{})
		forged := append([]byte(nil), v.packets[1].Msg...)
		m, _ := ikev2.Parse(forged)
		n, _ := m.Find(ikev2.PayloadNonce)
		n.Body[0] ^= 1
		ps := append([]Packet{v.packets[0], {Src: v.packets[1].Src, Dst: v.packets[1].Dst, Msg: forged}}, v.packets[1:]...)
		got := follow(t, f, ps, keys)
		if st := f.Stats(); len(got.Created) != 6 || st.Missed != 1 {
			t.Fatalf("%d SAs, stats %+v", len(got.Created), st)
		}
	})
	t.Run("keys", func(t *testing.T) {
		f := New(Config{})
		wrong := keys[0].Clone()
		wrong.D[0] ^= 1
		wrong.Ai[0] ^= 1
		wrong.Ar[0] ^= 1
		got := follow(t, f, v.packets, []ikev2.Keys{wrong})
		if st := f.Stats(); len(got.Created) != 0 || st.Bound != 0 {
			t.Fatalf("%d SAs, stats %+v", len(got.Created), st)
		}
	})
}

// TestBounded: a flood of IKE SAs that never get keys stays within the
// bounds, and does not push out an IKE SA that has them.
func TestBounded(t *testing.T) {
	v := load(t, "follow")
	keys := ikeKeys(t, v.left)
	f := New(Config{MaxIKESAs: 64, MaxHeldBytes: 4096})
	// Forged IKE_SA_INIT exchanges (cleartext: anyone can) fill the
	// table first; a real one still gets its IKE_AUTH CHILD_SA derived.
	for i := range 10000 {
		for _, p := range v.packets[:2] {
			msg := append([]byte(nil), p.Msg...)
			binary.BigEndian.PutUint64(msg, uint64(i)+1<<41)
			if binary.BigEndian.Uint64(msg[8:]) != 0 {
				binary.BigEndian.PutUint64(msg[8:], uint64(i)+1<<42)
			}
			f.Observe(Packet{Src: p.Src, Dst: p.Dst, Msg: msg})
		}
	}
	if got := follow(t, f, v.packets[:4], keys[:1]); len(got.Created) != 2 { // IKE_SA_INIT and IKE_AUTH: bound
		t.Fatalf("after a flood of IKE_SA_INITs: %d SAs from IKE_AUTH, stats %+v", len(got.Created), f.Stats())
	}
	auth := v.packets[2]
	for i := range 10000 {
		msg := append([]byte(nil), auth.Msg...)
		binary.BigEndian.PutUint64(msg, uint64(i)+1<<40)
		f.Observe(Packet{Src: auth.Src, Dst: auth.Dst, Msg: msg})
	}
	f.mu.Lock()
	n, held, inits := len(f.sas), f.heldBytes, len(f.inits)
	f.mu.Unlock()
	if n > 64 || held > 4096 || inits > 64 {
		t.Fatalf("%d IKE SAs, %d bytes held, %d inits", n, held, inits)
	}
	got := follow(t, f, v.packets[4:], nil)
	if len(got.Created) != 4 { // two rekeys on it; the third is on the next IKE SA, whose keys were not given
		t.Fatalf("the keyed IKE SA, after the flood: %d SAs from its rekeys, stats %+v", len(got.Created), f.Stats())
	}
}

// FuzzObserve: any message, in any order after the recorded ones, with
// the recorded keys: never a panic, the bounds hold.
func FuzzObserve(f *testing.F) {
	v := load(f, "follow")
	keys := ikeKeys(f, v.left)
	for _, p := range v.packets {
		f.Add(p.Msg, p.Src.Port() == 4500)
	}
	f.Fuzz(func(t *testing.T, msg []byte, fromLeft bool) {
		fl := New(Config{MaxIKESAs: 8, MaxHeldBytes: 2048})
		follow(t, fl, v.packets[:4], keys)
		src, dst := v.packets[0].Src, v.packets[0].Dst
		if !fromLeft {
			src, dst = dst, src
		}
		fl.Observe(Packet{Src: src, Dst: dst, Msg: msg})
		for _, p := range v.packets[4:] {
			fl.Observe(p)
		}
		fl.mu.Lock()
		defer fl.mu.Unlock()
		if len(fl.sas) > 8 || fl.heldBytes > 2048 || fl.heldBytes < 0 {
			t.Fatalf("%d IKE SAs, %d bytes held", len(fl.sas), fl.heldBytes)
		}
	})
}

// TestKeysAgain: the same keys given again (a server resends what it
// gave with every answer) change nothing and take no room.
func TestKeysAgain(t *testing.T) {
	v := load(t, "follow")
	keys := ikeKeys(t, v.left)
	f := New(Config{MaxUnbound: 2})
	for range 5 {
		follow(t, f, nil, keys)
	}
	got := follow(t, f, v.packets, keys)
	if st := f.Stats(); len(got.Created) != 8 || st.Bound != 2 {
		t.Fatalf("%d SAs, stats %+v", len(got.Created), st)
	}
}

// FuzzPacketOfFrame: any frame is an IKE packet whose message lies within
// it, or none; never a panic.
func FuzzPacketOfFrame(f *testing.F) {
	link, frames, err := pcapio.ReadFile(filepath.Join("..", "ikev2", "testdata", "follow", "ike.pcap"))
	if err != nil {
		f.Fatal(err)
	}
	for _, fr := range frames[:4] {
		f.Add(fr)
		f.Add(fr[:len(fr)/2])
	}
	f.Fuzz(func(t *testing.T, fr []byte) {
		p, ok := PacketOfFrame(link, fr)
		if ok && (len(p.Msg) > len(fr) || !p.Src.IsValid()) {
			t.Fatalf("packet %+v from %d bytes", p, len(fr))
		}
	})
}
