package ikefollow

import (
	"testing"
	"time"

	"github.com/espep/espep/internal/ikev2"
)

// TestHanded: a gateway that followed an IKE SA from its start hands its
// keys (SPIs set, ESP in UDP) to a neighbour that saw none of it; from the
// messages after the handover alone the neighbour derives every CHILD_SA
// the two strongSwan peers created next — the two rekeys, and after the
// IKE SA's own rekey (its new keys delegated as usual) the rekey on the
// new one — exactly as both charons installed them, UDP 4500 included,
// which it could only learn from the offer.
func TestHanded(t *testing.T) {
	v := load(t, "follow")
	keys := ikeKeys(t, v.left)
	first := New(Config{})
	if r := follow(t, first, v.packets[:4], keys[:1]); len(r.Created) != 2 {
		t.Fatalf("IKE_SA_INIT and IKE_AUTH gave %d SAs, want IKE_AUTH's 2", len(r.Created))
	}
	handed := first.Keyed()
	if len(handed) != 1 || handed[0].Keys.SPIi == 0 || handed[0].Keys.SPIr == 0 || !handed[0].Encap {
		t.Fatalf("keyed %+v, want one IKE SA with its SPIs and ESP in UDP", handed)
	}

	now := time.Unix(1000, 0)
	next := New(Config{Now: func() time.Time { return now }})
	if _, err := next.AddHanded(handed[0], time.Minute); err != nil {
		t.Fatal(err)
	}
	if k := next.Keyed(); len(k) != 0 {
		t.Fatalf("a neighbour's IKE SA not seen here is offered on: %d", len(k))
	}
	if _, err := next.AddHanded(handed[0], time.Minute); err != nil {
		t.Fatal(err) // the same keys again: left as they are
	}
	got := follow(t, next, v.packets[4:], keys[1:])
	want := childSAs(t, v.left)[2:]
	sameSAs(t, got.Created, want)
	sameSAs(t, got.Created, childSAs(t, v.right)[2:])
	if st := next.Stats(); st.Handed != 1 || st.Children != 3 || st.Integrity != 0 {
		t.Errorf("stats %+v", st)
	}
	if k := next.Keyed(); len(k) != 1 {
		t.Errorf("after its traffic came, %d IKE SAs keyed here, want the rekeyed one", len(k))
	}
	for _, c := range got.Created {
		c.WipeKeys()
	}
	for i := range handed {
		handed[i].Keys.Wipe()
	}
}

// TestHandedBounded: keys without SPIs or invalid are refused; a full
// table of IKE SAs keyed by neighbours refuses more until their offers
// lapse unused — then they are forgotten, keys wiped — but an IKE SA
// whose traffic came here is never pushed out.
func TestHandedBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	f := New(Config{MaxIKESAs: 2, Now: func() time.Time { return now }})
	k := func(i uint64) KeyedSA {
		return KeyedSA{Keys: ikev2.Keys{SPIi: i, SPIr: i + 100, PRF: ikev2.PRFHMACSHA2256, Encr: ikev2.EncrAESGCM16,
			D: bytes32(byte(i)), Ei: make([]byte, 20), Er: make([]byte, 20)}}
	}
	if _, err := f.AddHanded(KeyedSA{Keys: ikev2.Keys{PRF: ikev2.PRFHMACSHA2256}}, time.Minute); err == nil {
		t.Fatal("handed keys without SPIs taken")
	}
	bad := k(9)
	bad.Keys.Ei = nil
	if _, err := f.AddHanded(bad, time.Minute); err == nil {
		t.Fatal("invalid handed keys taken")
	}
	for i := range uint64(2) {
		if _, err := f.AddHanded(k(i+1), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.AddHanded(k(3), time.Minute); err == nil {
		t.Fatal("a third IKE SA taken into a table of two live offers")
	}
	now = now.Add(2 * time.Minute)
	if _, err := f.AddHanded(k(3), time.Minute); err != nil {
		t.Fatalf("lapsed offers made no room: %v", err)
	}
	f.mu.Lock()
	n := len(f.sas)
	f.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d IKE SAs kept, want only the live offer: the lapsed ones are forgotten, their keys wiped", n)
	}
	if _, err := f.AddHanded(k(5), time.Minute); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	for _, sa := range f.sas {
		sa.handedUntil = time.Time{} // as if its traffic had come
	}
	f.mu.Unlock()
	now = now.Add(time.Hour)
	if _, err := f.AddHanded(k(4), time.Minute); err == nil {
		t.Fatal("an IKE SA whose traffic came here was pushed out by a neighbour's offer")
	}
	if st := f.Stats(); st.Handed != 4 || st.Evicted != 2 {
		t.Errorf("stats %+v", st)
	}
}

func bytes32(b byte) []byte {
	out := make([]byte, 32)
	for i := range out {
		out[i] = b + byte(i)
	}
	return out
}
