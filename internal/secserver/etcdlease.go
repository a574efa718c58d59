package secserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/espep/espep/internal/secserver/pb"
)

// Leases shared by replicas (etcd): a gateway's lease is the key
// leases/<id>, holding who heartbeats it and the SAs it numbers, attached
// to an etcd lease of the server's lease time and replaced by each
// heartbeat. When a gateway stops beating, etcd deletes the key; every
// replica watches leases/ and orders the agents connected to it. So a
// gateway that moves to another replica keeps its identifier and its
// lease, and a replica that dies forgets nothing: the crash bound holds
// across replica failures. Who registered an identifier is kept
// (owners/<id>), so any replica can refuse another gateway's heartbeat.

// LeaseStore is a store that keeps leases for every replica (EtcdStore).
type LeaseStore interface {
	// Registered records who registered gateway identifier id.
	Registered(id uint64, who string) error
	// Owner is who registered id ("" if no one did).
	Owner(id uint64) (string, error)
	// Beat renews id's lease for ttl, naming the SAs it numbers.
	Beat(id uint64, who string, numbered []*pb.SAID, ttl time.Duration) error
	// FollowLapses calls lapsed for every lease that ends, by any
	// replica's count, until ctx ends or the watch breaks.
	FollowLapses(ctx context.Context, lapsed func(id uint64, who string, numbered []*pb.SAID)) error
}

// storedLease is a lease's value.
type storedLease struct {
	Who      string   `json:"who"`
	Numbered [][]byte `json:"numbered"` // marshaled pb.SAIDs
}

func (s *EtcdStore) leaseKey(id uint64) string {
	return s.prefix + "leases/" + strconv.FormatUint(id, 10)
}
func (s *EtcdStore) ownerKey(id uint64) string {
	return s.prefix + "owners/" + strconv.FormatUint(id, 10)
}

func (s *EtcdStore) Registered(id uint64, who string) error {
	ctx, cancel := context.WithTimeout(context.Background(), etcdTimeout)
	defer cancel()
	if _, err := s.c.Put(ctx, s.ownerKey(id), who); err != nil {
		return fmt.Errorf("secserver: etcd: %w", err)
	}
	return nil
}

func (s *EtcdStore) Owner(id uint64) (string, error) {
	return read(func(ctx context.Context) (string, error) {
		r, err := s.c.Get(ctx, s.ownerKey(id))
		if err != nil {
			return "", fmt.Errorf("secserver: etcd: %w", err)
		}
		if len(r.Kvs) == 0 {
			return "", nil
		}
		return string(r.Kvs[0].Value), nil
	})
}

func (s *EtcdStore) Beat(id uint64, who string, numbered []*pb.SAID, ttl time.Duration) error {
	v := storedLease{Who: who}
	for _, x := range numbered {
		b, err := proto.Marshal(x)
		if err != nil {
			return fmt.Errorf("secserver: %w", err)
		}
		v.Numbered = append(v.Numbered, b)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("secserver: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), etcdTimeout)
	defer cancel()
	secs := int64((ttl + time.Second - 1) / time.Second) // etcd counts whole seconds
	g, err := s.c.Grant(ctx, secs)
	if err != nil {
		return fmt.Errorf("secserver: etcd: %w", err)
	}
	// The key moves to the new etcd lease; the old one expires with no
	// key attached, deleting nothing.
	if _, err := s.c.Put(ctx, s.leaseKey(id), string(b), clientv3.WithLease(g.ID)); err != nil {
		return fmt.Errorf("secserver: etcd: %w", err)
	}
	return nil
}

func (s *EtcdStore) FollowLapses(ctx context.Context, lapsed func(id uint64, who string, numbered []*pb.SAID)) error {
	wc := s.c.Watch(clientv3.WithRequireLeader(ctx), s.prefix+"leases/", clientv3.WithPrefix(), clientv3.WithPrevKV())
	for wr := range wc {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("secserver: etcd: lease watch: %w", err)
		}
		for _, ev := range wr.Events {
			if ev.Type != clientv3.EventTypeDelete || ev.PrevKv == nil {
				continue
			}
			id, err := strconv.ParseUint(strings.TrimPrefix(string(ev.Kv.Key), s.prefix+"leases/"), 10, 64)
			if err != nil {
				continue
			}
			var v storedLease
			if json.Unmarshal(ev.PrevKv.Value, &v) != nil {
				continue
			}
			var ids []*pb.SAID
			for _, b := range v.Numbered {
				var x pb.SAID
				if proto.Unmarshal(b, &x) == nil {
					ids = append(ids, &x)
				}
			}
			lapsed(id, v.Who, ids)
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("secserver: etcd: lease watch ended")
}

// ShareLeases keeps this replica's leases and gateway owners in ls, where
// every replica sees them; call it before serving, then FollowLeases.
func (s *Server) ShareLeases(ls LeaseStore) {
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	s.leases.shared = ls
}

// FollowLeases orders the agents connected to this replica when a lease
// in the shared store lapses — whichever replica the gateway beat on. It
// runs until ctx ends, watching again (after a second) when the watch
// breaks.
func (s *Server) FollowLeases(ctx context.Context, ls LeaseStore) {
	for ctx.Err() == nil {
		err := ls.FollowLapses(ctx, func(id uint64, who string, numbered []*pb.SAID) {
			s.audit.Warn("lease lapsed", "who", who, "gateway_id", id, "numbered", len(numbered))
			s.orderAll(numbered, fmt.Sprintf("the lease of gateway %s lapsed", nameOf(who)))
		})
		if ctx.Err() != nil {
			return
		}
		s.audit.Warn("lease watch broken", "err", fmt.Sprint(err))
		sleepCtx(ctx, time.Second)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
