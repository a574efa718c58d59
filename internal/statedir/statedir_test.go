package statedir

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/espep/espep/ipsec"
)

func key(spi uint32) SeqKey {
	return SeqKey{ID: ipsec.ID{SPI: spi, Dst: netip.MustParseAddr("10.77.2.1"), Proto: ipsec.ESP}, KeyID: [16]byte{byte(spi)}}
}

func open(t *testing.T, path string) *Dir {
	t.Helper()
	d, err := Open(path, Partition{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// waitAllowed waits for the writer to make n allowed.
func waitAllowed(t *testing.T, l *Lease, n uint64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); l.Allowed() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("allowed %d, want %d", l.Allowed(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestIVBlocksNeverRepeat: blocks handed out by one process, by the next
// (after a close), and with a torn slot, never repeat.
func TestIVBlocksNeverRepeat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	seen := map[uint64]bool{}
	take := func(d *Dir, n int) {
		for range n {
			b, err := d.IVBlock()
			if err != nil {
				t.Fatal(err)
			}
			if seen[b] || b == 0 {
				t.Fatalf("block %d handed out twice (or zero)", b)
			}
			seen[b] = true
		}
	}
	for range 3 {
		d := open(t, path)
		take(d, 5)
		d.Close()
	}
	// Tear the slot written last: the other still holds a count one lower,
	// so the next block is the torn one's — never used, since a block is
	// handed out only after its slot is synced.
	f, _ := os.OpenFile(filepath.Join(path, "iv-blocks"), os.O_RDWR, 0)
	f.WriteAt([]byte{0xde, 0xad}, int64(15%2)*ivSlot)
	f.Close()
	d := open(t, path)
	b, err := d.IVBlock()
	if err != nil || b != 15 {
		t.Fatalf("after a torn slot: block %d, %v; want 15 (14 was the last synced)", b, err)
	}
	d.Close()
}

// TestPartitions: gateways with different partitions never share a block.
func TestPartitions(t *testing.T) {
	seen := map[uint64]string{}
	for k := range uint32(3) {
		d, err := Open(filepath.Join(t.TempDir(), "s"), Partition{K: k, N: 3}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for range 4 {
			b, err := d.IVBlock()
			if err != nil {
				t.Fatal(err)
			}
			if b%3 != uint64(k) || seen[b] != "" {
				t.Fatalf("partition %d/3: block %d (also %q)", k, b, seen[b])
			}
			seen[b] = fmt.Sprint(k)
		}
		d.Close()
	}
	for _, s := range []string{"3/3", "1/0", "x", "0/70000"} {
		if _, err := ParsePartition(s); err == nil {
			t.Errorf("partition %q accepted", s)
		}
	}
	if p, err := ParsePartition("2/8"); err != nil || p != (Partition{2, 8}) {
		t.Errorf("2/8: %v %v", p, err)
	}
}

// TestLeases: a lease grows when asked, a successor starts at the last
// record, a clean stop records what was used, other keys are apart.
func TestLeases(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	d := open(t, path)
	l := d.Lease(key(0x100))
	if l.Floor() != 0 || l.Allowed() != 0 {
		t.Fatalf("new lease: floor %d allowed %d", l.Floor(), l.Allowed())
	}
	l.Want(4096)
	waitAllowed(t, l, 4096)
	l.Want(8192)
	waitAllowed(t, l, 8192)
	l200 := d.Lease(key(0x200))
	l200.Want(10)
	waitAllowed(t, l200, 10)
	// No clean stop: the successor starts above everything reserved.
	d.closeFiles()
	close(d.done)
	d2 := open(t, path)
	l2 := d2.Lease(key(0x100))
	if f := l2.Floor(); f != 8192 {
		t.Fatalf("after a crash: floor %d, want 8192", f)
	}
	l2.Want(9000)
	waitAllowed(t, l2, 9000)
	l2.Release(8500)
	d2.Close()
	d3 := open(t, path)
	defer d3.Close()
	l3 := d3.Lease(key(0x100))
	if f := l3.Floor(); f != 8500 {
		t.Fatalf("after a clean stop: floor %d, want 8500 (what was used)", f)
	}
	// A second lease in the same process (a state made again) starts
	// above what the first reserved.
	l3.Want(9999)
	waitAllowed(t, l3, 9999)
	if f := d3.Lease(key(0x100)).Floor(); f != 9999 {
		t.Fatalf("a second lease: floor %d, want 9999", f)
	}
	if f := d3.Lease(key(0x200)).Floor(); f != 10 {
		t.Fatalf("other SA: floor %d", f)
	}
	k := key(0x100)
	k.KeyID[0]++
	if f := d3.Lease(k).Floor(); f != 0 {
		t.Fatalf("same SPI, new keys: floor %d", f)
	}
}

// TestMemory: a Memory Dir grants at once, and a lease taken after
// another (a gateway restarted in the same process) starts above it.
func TestMemory(t *testing.T) {
	d := Memory()
	l := d.Lease(key(0x500))
	l.Want(100)
	if l.Allowed() != 100 {
		t.Fatalf("allowed %d", l.Allowed())
	}
	if f := d.Lease(key(0x500)).Floor(); f != 100 {
		t.Fatalf("second lease floor %d", f)
	}
	a, _ := d.IVBlock()
	b, _ := d.IVBlock()
	if a == b || a == 0 {
		t.Fatalf("blocks %d %d", a, b)
	}
}

// TestMemoryIn: Memory dirs in distinct partitions never hand out the
// same IV block.
func TestMemoryIn(t *testing.T) {
	seen := map[uint64]int{}
	for k := range uint32(3) {
		d := MemoryIn(Partition{K: k, N: 3})
		for range 50 {
			b, err := d.IVBlock()
			if err != nil || b == 0 || b%3 != uint64(k) {
				t.Fatalf("partition %d/3: block %d, %v", k, b, err)
			}
			if p, dup := seen[b]; dup {
				t.Fatalf("block %d in partitions %d and %d", b, p, k)
			}
			seen[b] = int(k)
		}
	}
}

// TestDrop: a dropped lease is no longer kept, and what it was allowed
// stays the floor of the next one.
func TestDrop(t *testing.T) {
	d := open(t, filepath.Join(t.TempDir(), "s"))
	defer d.Close()
	l := d.Lease(key(0x800))
	l.Want(300)
	waitAllowed(t, l, 300)
	l.Drop()
	if n := len(d.leases); n != 0 {
		t.Fatalf("%d lease keys kept after Drop", n)
	}
	if f := d.Lease(key(0x800)).Floor(); f != 300 {
		t.Fatalf("floor after Drop: %d", f)
	}
}

// TestOneHolder: a second process (or Open) is refused while the
// directory is held, and admitted once it is released.
func TestOneHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	d := open(t, path)
	if _, err := Open(path, Partition{}, nil); err == nil || !strings.Contains(err.Error(), "held by another") {
		t.Fatalf("second holder: %v", err)
	}
	d.Close()
	open(t, path).Close()
}

// TestPermissions: a directory or file open to group or others is
// refused with an error that says so.
func TestPermissions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	open(t, path).Close()
	os.Chmod(path, 0o750)
	if _, err := Open(path, Partition{}, nil); err == nil || !strings.Contains(err.Error(), "group and others") {
		t.Fatalf("dir 0750: %v", err)
	}
	os.Chmod(path, 0o700)
	os.Chmod(filepath.Join(path, "seq.log"), 0o644)
	if _, err := Open(path, Partition{}, nil); err == nil || !strings.Contains(err.Error(), "seq.log") {
		t.Fatalf("seq.log 0644: %v", err)
	}
}

// TestTornJournal: a record cut short by a crash is skipped; the others
// count.
func TestTornJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	d := open(t, path)
	l := d.Lease(key(0x300))
	l.Want(100)
	waitAllowed(t, l, 100)
	l.Want(200)
	waitAllowed(t, l, 200)
	d.Close()
	f, _ := os.OpenFile(filepath.Join(path, "seq.log"), os.O_WRONLY|os.O_APPEND, 0)
	var b [recLen]byte
	encode(b[:], key(0x300), record{value: 999})
	f.Write(b[:40])
	f.Close()
	d = open(t, path)
	defer d.Close()
	if fl := d.Lease(key(0x300)).Floor(); fl != 200 {
		t.Fatalf("floor %d, want 200", fl)
	}
}

// TestKilled: a process that reserves and uses as fast as it can is
// SIGKILLed at random moments; every value it reported using lies below
// what its successor finds. It runs this test binary as the child.
func TestKilled(t *testing.T) {
	if os.Getenv("STATEDIR_CHILD") != "" {
		child(os.Getenv("STATEDIR_CHILD"))
		return
	}
	path := filepath.Join(t.TempDir(), "state")
	usedBlocks := map[uint64]bool{}
	var usedSeq uint64
	for i := range 5 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKilled$")
		cmd.Env = append(os.Environ(), "STATEDIR_CHILD="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		n := 0
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 2 {
				continue
			}
			v, _ := strconv.ParseUint(f[1], 10, 64)
			switch f[0] {
			case "block":
				if usedBlocks[v] {
					t.Fatalf("run %d: block %d used by an earlier process", i, v)
				}
				usedBlocks[v] = true
			case "seq":
				if v <= usedSeq {
					t.Fatalf("run %d: sequence number %d at or below %d, used before", i, v, usedSeq)
				}
				usedSeq = v
			}
			if n++; n == 2000+i*500 {
				cmd.Process.Signal(syscall.SIGKILL)
			}
		}
		cmd.Wait()
		if n < 100 {
			t.Fatalf("run %d: the child reported %d values", i, n)
		}
	}
	t.Logf("%d blocks, sequence numbers up to %d over 5 killed processes", len(usedBlocks), usedSeq)
}

// child reserves IV blocks and sequence numbers and prints each one it
// uses, until it is killed.
func child(path string) {
	d, err := Open(path, Partition{}, nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	l := d.Lease(key(0x400))
	seq := l.Floor()
	for i := 0; ; i++ {
		if i%50 == 0 {
			b, err := d.IVBlock()
			if err != nil {
				os.Exit(1)
			}
			fmt.Println("block", b)
		}
		seq++
		if seq+64 > l.Allowed() {
			l.Want(seq + 128)
		}
		for seq > l.Allowed() {
			time.Sleep(10 * time.Microsecond)
		}
		fmt.Println("seq", seq)
	}
}

// TestSalts: a confirmed IV salt survives the process, apart from the
// sequence records, and a Memory Dir keeps it for the process.
func TestSalts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	d := open(t, path)
	if _, ok := d.Salt(key(0x600)); ok {
		t.Fatal("a salt nobody set")
	}
	d.SetSalt(key(0x600), 0xfeedface)
	l := d.Lease(key(0x600))
	l.Want(50)
	waitAllowed(t, l, 50)
	d.Close()
	d = open(t, path)
	defer d.Close()
	if v, ok := d.Salt(key(0x600)); !ok || v != 0xfeedface {
		t.Fatalf("salt after a restart: %#x %v", v, ok)
	}
	if f := d.Lease(key(0x600)).Floor(); f != 50 {
		t.Fatalf("floor %d", f)
	}
	m := Memory()
	m.SetSalt(key(1), 7)
	if v, ok := m.Salt(key(1)); !ok || v != 7 {
		t.Fatal("memory salt")
	}
}

// TestAcceptedSpace: an SA's Accepted space (the endpoint's numbers a
// gateway may have accepted) is leased apart from its Numbers (the
// gateway's own): each has its own floor, after a crash and after a clean
// stop, and one never raises the other.
func TestAcceptedSpace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	d := open(t, path)
	nk, ak := key(0x800), key(0x800)
	ak.Space = Accepted
	n, a := d.Lease(nk), d.Lease(ak)
	n.Want(100)
	a.Want(70000)
	waitAllowed(t, n, 100)
	waitAllowed(t, a, 70000)
	d.closeFiles() // a crash
	close(d.done)
	d = open(t, path)
	if fn, fa := d.Lease(nk).Floor(), d.Lease(ak).Floor(); fn != 100 || fa != 70000 {
		t.Fatalf("after a crash: floors %d (numbers), %d (accepted); want 100, 70000", fn, fa)
	}
	a = d.Lease(ak)
	a.Want(80000)
	waitAllowed(t, a, 80000)
	a.Release(70500) // the highest the endpoint's packets reached
	d.Close()
	d = open(t, path)
	defer d.Close()
	if fn, fa := d.Lease(nk).Floor(), d.Lease(ak).Floor(); fn != 100 || fa != 70500 {
		t.Fatalf("after a clean stop: floors %d (numbers), %d (accepted); want 100, 70500", fn, fa)
	}
}

// TestAcceptedLazySync: a batch of Accepted records alone is written at
// once — a killed process loses none of it — and synced within
// AcceptSync, not on its own; a reservation is synced before it is
// allowed, and takes the written records with it.
func TestAcceptedLazySync(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	d := open(t, path)
	ak := key(0xa00)
	ak.Space = Accepted
	a, n := d.Lease(ak), d.Lease(key(0xa00))
	syncs := func() int {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.syncs
	}
	base := syncs()
	a.Want(500)
	waitAllowed(t, a, 500)
	if got := syncs(); got != base {
		t.Fatalf("an Accepted record alone was synced (%d syncs, want %d)", got, base)
	}
	n.Want(100)
	waitAllowed(t, n, 100)
	if got := syncs(); got != base+1 {
		t.Fatalf("a reservation: %d syncs, want %d", got, base+1)
	}
	a.Want(900)
	waitAllowed(t, a, 900)
	start := time.Now()
	for syncs() != base+2 {
		if time.Since(start) > 3*AcceptSync {
			t.Fatalf("an Accepted record still unsynced after %v (%d syncs)", time.Since(start), syncs())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if w := time.Since(start); w < AcceptSync/2 {
		t.Errorf("the lazy sync came after %v, want about AcceptSync", w)
	}
	d.closeFiles() // killed: what was written is in the file
	close(d.done)
	d = open(t, path)
	defer d.Close()
	if f := d.Lease(ak).Floor(); f != 900 {
		t.Fatalf("after a kill: accepted floor %d, want 900", f)
	}
}

// FuzzStateFiles: whatever the journal and the IV block file hold (a disk
// that tore them, a hand that edited them), Open does not panic: it
// refuses or reads what verifies, and a block it hands out is above every
// valid slot.
func FuzzStateFiles(f *testing.F) {
	var rec [recLen]byte
	encode(rec[:], key(0x700), record{value: 77, at: 1})
	var slt [recLen]byte
	encodeMagic(slt[:], saltMagic, key(0x700), record{value: 5})
	var acc [recLen]byte
	ak := key(0x700)
	ak.Space = Accepted
	encode(acc[:], ak, record{value: 1 << 40, at: 1})
	var slot [ivSlot]byte
	slot[7] = 9
	f.Add(append(rec[:], slt[:]...), slot[:])
	f.Add(append(acc[:], rec[:]...), slot[:])
	f.Add(rec[:40], []byte{1, 2, 3})
	f.Add([]byte{}, append(slot[:], slot[:]...))
	f.Fuzz(func(t *testing.T, journal, blocks []byte) {
		if len(journal) > 1<<16 {
			return
		}
		path := filepath.Join(t.TempDir(), "s")
		if err := os.MkdirAll(path, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(path, "seq.log"), journal, 0o600)
		os.WriteFile(filepath.Join(path, "iv-blocks"), blocks, 0o600)
		d, err := Open(path, Partition{}, nil)
		if err != nil {
			return
		}
		defer d.Close()
		b, err := d.IVBlock()
		if err != nil {
			return
		}
		for s := 0; s+ivSlot <= min(len(blocks), 2*ivSlot); s += ivSlot {
			x := blocks[s : s+ivSlot]
			if v := binary.BigEndian.Uint64(x); crc32.Checksum(x[:8], castagnoli) == binary.BigEndian.Uint32(x[8:]) && b <= v {
				t.Fatalf("block %d handed out at or below a valid slot's count %d", b, v)
			}
		}
	})
}

// TestAcceptsSpacing: Note records a number only NoteEvery above the last
// record and NoteGap after it, never more often; a record taken after it
// starts from the last one, and the SA's own numbers are another space.
func TestAcceptsSpacing(t *testing.T) {
	d := Memory()
	a := d.Accepts(key(0x900))
	for seq := uint64(1); seq < NoteEvery; seq++ {
		a.Note(seq)
	}
	if a.Noted() != 0 {
		t.Fatalf("%d recorded below NoteEvery", a.Noted())
	}
	a.Note(NoteEvery)
	a.Note(2 * NoteEvery) // within NoteGap: not recorded
	if a.Noted() != NoteEvery || a.Recorded() != NoteEvery {
		t.Fatalf("noted %d, recorded %d; want %d", a.Noted(), a.Recorded(), NoteEvery)
	}
	time.Sleep(NoteGap)
	// The clock was read at 2·NoteEvery; the next reading is NoteEvery on.
	a.Note(3*NoteEvery - 1)
	if a.Noted() != NoteEvery {
		t.Fatalf("noted %d before NoteEvery numbers since the clock was read", a.Noted())
	}
	a.Note(3 * NoteEvery)
	if a.Noted() != 3*NoteEvery {
		t.Fatalf("after NoteGap: noted %d", a.Noted())
	}
	if f := d.Accepts(key(0x900)).Floor(); f != 3*NoteEvery {
		t.Fatalf("a second record's floor %d", f)
	}
	if f := d.Lease(key(0x900)).Floor(); f != 0 {
		t.Fatalf("the SA's own numbers moved: floor %d", f)
	}
}
