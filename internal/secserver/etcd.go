package secserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/espep/espep/internal/pki"
)

// EtcdStore is the store in an etcd cluster, for several security server
// replicas serving one fleet. Records are sealed as in BoltStore (etcd
// never sees a key in the clear); gateway identifiers come from one
// counter advanced by compare-and-swap, so two replicas never hand out the
// same one.
type EtcdStore struct {
	c      *clientv3.Client
	prefix string
	sealer
}

// etcdTimeout bounds one store operation: a cluster without a quorum
// fails a request in this time rather than holding the caller.
const etcdTimeout = 5 * time.Second

// OpenEtcd connects to the cluster at endpoints (TLS when tlsCfg is not
// nil), keeping everything under prefix, sealed under key.
func OpenEtcd(endpoints []string, tlsCfg *tls.Config, prefix string, key []byte) (*EtcdStore, error) {
	sl, err := newSealer(key)
	if err != nil {
		return nil, err
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: etcdTimeout, TLS: tlsCfg, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("secserver: etcd: %w", err)
	}
	return &EtcdStore{c: c, prefix: strings.TrimSuffix(prefix, "/") + "/", sealer: sl}, nil
}

func (s *EtcdStore) saKey(id SAKey) string { return s.prefix + "sas/" + string(id.bytes()) }
func (s *EtcdStore) pairPrefix(a, b netip.Addr) string {
	return s.prefix + "pairs/" + string(pairKey(a, b)) + "/"
}

func (s *EtcdStore) Put(id SAKey, pair [2]netip.Addr, rec Record) error {
	k := s.saKey(id)
	sealed, err := s.seal(id.bytes(), rec)
	if err != nil {
		return fmt.Errorf("secserver: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), etcdTimeout)
	defer cancel()
	_, err = s.c.Txn(ctx).Then(clientv3.OpPut(k, string(sealed)), clientv3.OpPut(s.pairPrefix(pair[0], pair[1])+string(id.bytes()), "")).Commit()
	if err != nil {
		return fmt.Errorf("secserver: etcd: %w", err)
	}
	return nil
}

// read runs an idempotent read, again twice (100 ms apart) if it fails:
// a member that just went away resets the connection of the request
// under way, and the client's next try goes to another member.
func read[T any](do func(ctx context.Context) (T, error)) (T, error) {
	var r T
	var err error
	for try := 0; try < 3; try++ {
		if try > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), etcdTimeout)
		r, err = do(ctx)
		cancel()
		if err == nil {
			return r, nil
		}
	}
	return r, err
}

func (s *EtcdStore) Get(id SAKey) (Record, bool, error) {
	r, err := read(func(ctx context.Context) (*clientv3.GetResponse, error) { return s.c.Get(ctx, s.saKey(id)) })
	if err != nil {
		return Record{}, false, fmt.Errorf("secserver: etcd: %w", err)
	}
	if len(r.Kvs) == 0 {
		return Record{}, false, nil
	}
	rec, err := s.open(id.bytes(), r.Kvs[0].Value)
	return rec, err == nil, err
}

func (s *EtcdStore) Pair(a, b netip.Addr) (map[SAKey]Record, error) {
	pp := s.pairPrefix(a, b)
	idx, err := read(func(ctx context.Context) (*clientv3.GetResponse, error) {
		return s.c.Get(ctx, pp, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	})
	if err != nil {
		return nil, fmt.Errorf("secserver: etcd: %w", err)
	}
	var ops []clientv3.Op
	for _, kv := range idx.Kvs {
		ops = append(ops, clientv3.OpGet(s.prefix+"sas/"+strings.TrimPrefix(string(kv.Key), pp)))
	}
	sealed := map[string][]byte{}
	if len(ops) > 0 {
		r, err := read(func(ctx context.Context) (*clientv3.TxnResponse, error) { return s.c.Txn(ctx).Then(ops...).Commit() })
		if err != nil {
			return nil, fmt.Errorf("secserver: etcd: %w", err)
		}
		for _, resp := range r.Responses {
			for _, kv := range resp.GetResponseRange().Kvs {
				sealed[strings.TrimPrefix(string(kv.Key), s.prefix+"sas/")] = kv.Value
			}
		}
	}
	return s.openAll(sealed)
}

func (s *EtcdStore) All() (map[SAKey]Record, error) {
	r, err := read(func(ctx context.Context) (*clientv3.GetResponse, error) {
		return s.c.Get(ctx, s.prefix+"sas/", clientv3.WithPrefix())
	})
	if err != nil {
		return nil, fmt.Errorf("secserver: etcd: %w", err)
	}
	sealed := map[string][]byte{}
	for _, kv := range r.Kvs {
		sealed[strings.TrimPrefix(string(kv.Key), s.prefix+"sas/")] = kv.Value
	}
	return s.openAll(sealed)
}

func (s *EtcdStore) Delete(id SAKey) error {
	ctx, cancel := context.WithTimeout(context.Background(), etcdTimeout)
	defer cancel()
	// The pair index keeps a dangling name; Pair skips it.
	if _, err := s.c.Delete(ctx, s.saKey(id)); err != nil {
		return fmt.Errorf("secserver: etcd: %w", err)
	}
	return nil
}

func (s *EtcdStore) NextGatewayID() (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), etcdTimeout)
	defer cancel()
	k := s.prefix + "gateway-id"
	for {
		r, err := s.c.Get(ctx, k)
		if err != nil {
			return 0, fmt.Errorf("secserver: etcd: %w", err)
		}
		var last uint64
		cmp := clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
		if len(r.Kvs) > 0 {
			if last, err = strconv.ParseUint(string(r.Kvs[0].Value), 10, 64); err != nil {
				return 0, fmt.Errorf("secserver: etcd: gateway counter %q", r.Kvs[0].Value)
			}
			cmp = clientv3.Compare(clientv3.ModRevision(k), "=", r.Kvs[0].ModRevision)
		}
		next := last + 1
		t, err := s.c.Txn(ctx).If(cmp).Then(clientv3.OpPut(k, strconv.FormatUint(next, 10))).Commit()
		if err != nil {
			return 0, fmt.Errorf("secserver: etcd: %w", err)
		}
		if t.Succeeded {
			return next, nil
		}
		// Another replica took it first: read again.
	}
}

func (s *EtcdStore) Close() error { return s.c.Close() }

// Follow calls ready once the watch is in place and fn for every change
// to the stored SAs after revision from (0: after the one the watch starts
// at), by any replica, as etcd reports them (rec nil: deleted, prev what
// was there), until ctx ends or the watch breaks. It returns the revision
// to go on from, so that a watch that breaks (a member gone, no leader)
// loses nothing; ErrFeedGap when etcd has compacted what was missed.
func (s *EtcdStore) Follow(ctx context.Context, from int64, ready func(), fn func(id SAKey, rec, prev *Record)) (int64, error) {
	p := s.prefix + "sas/"
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithCreatedNotify()}
	if from > 0 {
		opts = append(opts, clientv3.WithRev(from))
	}
	next := from
	for resp := range s.c.Watch(clientv3.WithRequireLeader(ctx), p, opts...) {
		if resp.CompactRevision != 0 {
			return 0, fmt.Errorf("secserver: etcd watch from revision %d: %w", from, ErrFeedGap)
		}
		if err := resp.Err(); err != nil {
			return next, fmt.Errorf("secserver: etcd watch: %w", err)
		}
		if resp.Created {
			if next == 0 {
				next = resp.Header.Revision + 1
			}
			ready()
			continue
		}
		for _, ev := range resp.Events {
			s.feed(p, ev, fn)
			next = ev.Kv.ModRevision + 1
		}
	}
	if ctx.Err() != nil {
		return next, nil
	}
	return next, fmt.Errorf("secserver: etcd watch ended")
}

// feed opens one watch event and passes it to fn; a record that does not
// open (not sealed under this store's key) is left out.
func (s *EtcdStore) feed(p string, ev *clientv3.Event, fn func(id SAKey, rec, prev *Record)) {
	name := strings.TrimPrefix(string(ev.Kv.Key), p)
	id, err := parseKey([]byte(name))
	if err != nil {
		return
	}
	var rec, prev *Record
	if ev.Type == clientv3.EventTypePut {
		r, err := s.open([]byte(name), ev.Kv.Value)
		if err != nil {
			return
		}
		rec = &r
	}
	if ev.PrevKv != nil {
		if r, err := s.open([]byte(name), ev.PrevKv.Value); err == nil {
			prev = &r
		}
	}
	fn(id, rec, prev)
}

// EtcdTLS is the client TLS of a replica toward an etcd cluster that
// admits clients by certificate: certFile and keyFile the replica's (key
// closed to group and others), caFile the CA the members' certificates
// come from.
func EtcdTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := pki.LoadTLS(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	ca, err := pki.LoadCert(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, RootCAs: pool}, nil
}
