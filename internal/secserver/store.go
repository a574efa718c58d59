package secserver

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/espep/espep/ipsec"
)

// Record is one stored SA with what the server decides by: where it was
// uploaded from, by whom, until when.
type Record struct {
	SA      []byte    // the pb.SA, marshaled, keys included
	Area    string    // the uploading endpoint's area
	Owner   string    // the uploader (certificate name and serial)
	Expires time.Time // zero: no time limit
	// Generated marks half of a pair the server made (scheme 4,
	// generate.go); Created, the same for both halves, pairs them. Its SA
	// is stored with every key (the endpoints need them), and Permit is
	// the most a gateway may get of it.
	Generated bool        `json:",omitempty"`
	Created   time.Time   `json:",omitzero"`
	Permit    ipsec.Class `json:",omitempty"`
	// IKE marks an IKE SA's keys (ike.go): SA then holds a pb.IKEKeys.
	IKE bool `json:",omitempty"`
}

// Store keeps records and gateway identifiers durably.
type Store interface {
	// Put stores rec under the SA's (SPI, destination, protocol), indexed
	// by its address pair; it replaces what was there.
	Put(id SAKey, pair [2]netip.Addr, rec Record) error
	// Pair returns the records between two addresses, both directions.
	Pair(a, b netip.Addr) (map[SAKey]Record, error)
	// Get returns one record, or false.
	Get(id SAKey) (Record, bool, error)
	// All returns every record.
	All() (map[SAKey]Record, error)
	// Delete removes one record.
	Delete(id SAKey) error
	// NextGatewayID returns an identifier never returned before, durably.
	NextGatewayID() (uint64, error)
	Close() error
}

// SAKey is an SA's identity in the store.
type SAKey struct {
	SPI   uint32
	Dst   netip.Addr
	Proto string
}

func (k SAKey) bytes() []byte { return fmt.Appendf(nil, "%08x/%s/%s", k.SPI, k.Dst, k.Proto) }

func parseKey(b []byte) (SAKey, error) {
	parts := strings.Split(string(b), "/")
	if len(parts) != 3 {
		return SAKey{}, fmt.Errorf("secserver: store key %q", b)
	}
	var k SAKey
	if _, err := fmt.Sscanf(parts[0], "%08x", &k.SPI); err != nil {
		return SAKey{}, fmt.Errorf("secserver: store key %q: %w", b, err)
	}
	var err error
	if k.Dst, err = netip.ParseAddr(parts[1]); err != nil {
		return SAKey{}, fmt.Errorf("secserver: store key %q: %w", b, err)
	}
	k.Proto = parts[2]
	return k, nil
}

// pairKey is the index key of an address pair, the same both ways.
func pairKey(a, b netip.Addr) []byte {
	if b.Less(a) {
		a, b = b, a
	}
	return fmt.Appendf(nil, "%s|%s", a, b)
}

// Buckets of the bbolt store.
var (
	bucketSAs      = []byte("sas")      // SAKey → sealed Record
	bucketPairs    = []byte("pairs")    // pairKey → bucket of SAKey → ""
	bucketGateways = []byte("gateways") // its sequence numbers the gateways
)

// BoltStore is the store in one bbolt file; every record is sealed with
// AES-256-GCM under a key kept apart from it, the store key bound to the
// record as associated data (a record cannot be moved to another key).
type BoltStore struct {
	db *bolt.DB
	sealer
}

// sealer seals records under the store key, the record's key bound as
// associated data (a record cannot be moved to another key).
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (sealer, error) {
	if len(key) != 32 {
		return sealer{}, errors.New("secserver: store key: want 32 bytes")
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return sealer{}, fmt.Errorf("secserver: %w", err)
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return sealer{}, fmt.Errorf("secserver: %w", err)
	}
	return sealer{aead}, nil
}

// LoadKey reads the store key: 64 hex digits (32 bytes) in a file closed
// to group and others.
func LoadKey(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secserver: store key: %w", err)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return nil, fmt.Errorf("secserver: store key %s has mode %#o: it must be closed to group and others (chmod go-rwx)", path, m)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secserver: store key: %w", err)
	}
	k, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) != 32 {
		return nil, fmt.Errorf("secserver: store key %s: want 64 hex digits", path)
	}
	return k, nil
}

// OpenBolt opens (or makes) the store at path, sealed under key.
func OpenBolt(path string, key []byte) (*BoltStore, error) {
	sl, err := newSealer(key)
	if err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("secserver: store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketSAs, bucketPairs, bucketGateways} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("secserver: store %s: %w", path, err)
	}
	return &BoltStore{db: db, sealer: sl}, nil
}

func (s sealer) seal(key []byte, rec Record) ([]byte, error) {
	plain, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := s.aead.Seal(nonce, nonce, plain, key)
	clear(plain)
	return out, nil
}

func (s sealer) open(key, sealed []byte) (Record, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return Record{}, fmt.Errorf("secserver: record %s: too short", key)
	}
	plain, err := s.aead.Open(nil, sealed[:n], sealed[n:], key)
	if err != nil {
		return Record{}, fmt.Errorf("secserver: record %s: does not open under the store key: %w", key, err)
	}
	var rec Record
	err = json.Unmarshal(plain, &rec)
	clear(plain)
	return rec, err
}

func (s *BoltStore) Put(id SAKey, pair [2]netip.Addr, rec Record) error {
	k := id.bytes()
	sealed, err := s.seal(k, rec)
	if err != nil {
		return fmt.Errorf("secserver: %w", err)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketSAs).Put(k, sealed); err != nil {
			return err
		}
		idx, err := tx.Bucket(bucketPairs).CreateBucketIfNotExists(pairKey(pair[0], pair[1]))
		if err != nil {
			return err
		}
		return idx.Put(k, nil)
	})
}

func (s *BoltStore) Get(id SAKey) (Record, bool, error) {
	var sealed []byte
	s.db.View(func(tx *bolt.Tx) error {
		sealed = clone(tx.Bucket(bucketSAs).Get(id.bytes()))
		return nil
	})
	if sealed == nil {
		return Record{}, false, nil
	}
	rec, err := s.open(id.bytes(), sealed)
	return rec, err == nil, err
}

func (s *BoltStore) Pair(a, b netip.Addr) (map[SAKey]Record, error) {
	sealed := map[string][]byte{}
	s.db.View(func(tx *bolt.Tx) error {
		idx := tx.Bucket(bucketPairs).Bucket(pairKey(a, b))
		if idx == nil {
			return nil
		}
		sas := tx.Bucket(bucketSAs)
		return idx.ForEach(func(k, _ []byte) error {
			if v := sas.Get(k); v != nil {
				sealed[string(k)] = clone(v)
			}
			return nil
		})
	})
	return s.openAll(sealed)
}

func (s *BoltStore) All() (map[SAKey]Record, error) {
	sealed := map[string][]byte{}
	s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSAs).ForEach(func(k, v []byte) error {
			sealed[string(k)] = clone(v)
			return nil
		})
	})
	return s.openAll(sealed)
}

// openAll opens sealed records by their store keys.
func (s sealer) openAll(sealed map[string][]byte) (map[SAKey]Record, error) {
	out := map[SAKey]Record{}
	for k, v := range sealed {
		id, err := parseKey([]byte(k))
		if err != nil {
			return nil, err
		}
		if out[id], err = s.open([]byte(k), v); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *BoltStore) Delete(id SAKey) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		// The pair index keeps a dangling name; Pair skips it.
		return tx.Bucket(bucketSAs).Delete(id.bytes())
	})
}

func (s *BoltStore) NextGatewayID() (uint64, error) {
	var id uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		id, err = tx.Bucket(bucketGateways).NextSequence()
		if err == nil {
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], id)
			err = tx.Bucket(bucketGateways).Put(b[:], nil)
		}
		return err
	})
	return id, err
}

func (s *BoltStore) Close() error { return s.db.Close() }
