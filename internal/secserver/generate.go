package secserver

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/pb"
	"github.com/espep/espep/ipsec"
)

// Scheme 4: the server generates the SAs. An endpoint's agent asks for the
// pair between one of its own addresses and a peer; the first such request
// makes the pair (two SAs, fresh random SPIs and keys from crypto/rand),
// every later one — the peer's agent's, or the same agent's next poll —
// gets the same pair, oriented for the caller, until it is replaced: when
// its lifetime is two-thirds gone, or when the caller names one of its
// SAs to replace (a rekey ordered because a gateway that numbered it is
// gone). A replaced pair is deleted, and the agents listening for orders
// are ordered to rekey it, which makes the peer's agent fetch the new one. The pair is stored as uploaded SAs are, so gateways fetch it and
// are pushed it by area; its area is the latest caller's that names one
// (the mobile's agent, as it moves), and its class the least any caller
// permitted.
//
// Two replicas answering the first two requests at once could each make a
// pair; the newer wins at the next request (older generated pairs between
// the same addresses are deleted), and the endpoints' agents follow it.

// DefaultGeneratedLifetime is the hard lifetime of a generated pair when
// the request names none.
const DefaultGeneratedLifetime = time.Hour

// Generate gives an agent the SA pair between its address and a peer's.
func (s *Server) Generate(ctx context.Context, req *pb.GenerateRequest) (*pb.GenerateReply, error) {
	id, who, err := s.caller(ctx, "generate", pki.RoleAgent)
	if err != nil {
		return nil, err
	}
	want, err := s.genWant(req)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "generate: %v", err)
	}
	if !id.Owns(want.local) {
		return nil, s.refuse("generate", who, &ipsec.Config{Src: want.local, Dst: want.remote}, codes.PermissionDenied,
			fmt.Sprintf("%v does not belong to %q", want.local, id.Name))
	}
	s.genMu.Lock()
	defer s.genMu.Unlock()
	cur, stale, err := s.generated(want)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: %v", err)
	}
	if cur == nil || replaced(cur, req.GetReplace()) || s.now().After(cur.renewAt) {
		if cur != nil && want.area == "" {
			want.area = cur.recs[0].Area // the new pair stays where the old one was
		}
		if cur != nil {
			stale = append(stale, *cur)
		}
		if cur, err = s.makePair(want, who); err != nil {
			return nil, err
		}
	} else if err := s.amendPair(cur, want); err != nil {
		return nil, err
	}
	for _, old := range stale {
		s.dropPair(old, who)
		// The peer's agent installs the new pair now rather than at its
		// next poll: its host would otherwise seal on SAs the gateways
		// no longer hold.
		s.orderAll(saids(old.keys[:]), "the server replaced the pair")
	}
	out, in := cur.recs[0], cur.recs[1]
	if cur.cfgs[0].Src != want.local {
		out, in = in, out
	}
	reply := &pb.GenerateReply{}
	for i, rec := range []Record{out, in} {
		c, err := s.configOf(rec)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "stored sa: %v", err)
		}
		s.audit.Info("released", "call", "generate", "who", who, "spi", fmt.Sprintf("%#08x", c.SPI), "dst", c.Dst.String(), "class", "endpoint")
		sa := toPB(&c, ipsec.ClassWrite) // the endpoint seals and opens: all keys
		c.WipeKeys()
		if i == 0 {
			reply.Out = sa
		} else {
			reply.In = sa
		}
	}
	return reply, nil
}

// genWant is a checked request.
type genWant struct {
	local, remote netip.Addr
	mode          ipsec.Mode
	enc           ipsec.Enc
	integ         ipsec.Integ
	class         ipsec.Class
	area          string
	life          time.Duration
}

func (s *Server) genWant(req *pb.GenerateRequest) (genWant, error) {
	var w genWant
	var okL, okR bool
	w.local, okL = netip.AddrFromSlice(req.GetLocal())
	w.remote, okR = netip.AddrFromSlice(req.GetRemote())
	if !okL || !okR || w.local.Is4() != w.remote.Is4() || w.local == w.remote {
		return w, fmt.Errorf("want two different addresses of one family")
	}
	w.local, w.remote = w.local.Unmap(), w.remote.Unmap()
	switch req.GetMode() {
	case "transport", "":
		w.mode = ipsec.Transport
	case "tunnel":
		w.mode = ipsec.Tunnel
	default:
		return w, fmt.Errorf("mode %q: want transport or tunnel", req.GetMode())
	}
	w.enc = ipsec.EncAESGCM16
	var err error
	if e := req.GetEnc(); e != "" {
		if w.enc, err = ipsec.ParseEnc(e); err != nil {
			return w, err
		}
	}
	if i := req.GetInteg(); i != "" {
		if w.integ, err = ipsec.ParseInteg(i); err != nil {
			return w, err
		}
	}
	if w.enc == ipsec.EncNone || w.enc.AEAD() != (w.integ == ipsec.IntegNone) {
		return w, fmt.Errorf("%v with %v: want an AEAD alone, or a cipher with an integrity transform", w.enc, w.integ)
	}
	switch req.GetClass() {
	case pb.Class_CLASS_READ:
		w.class = ipsec.ClassRead
		if w.enc.AEAD() {
			return w, fmt.Errorf("class read for %v: an AEAD SA cannot be read without its integrity key", w.enc)
		}
	case pb.Class_CLASS_WRITE:
		w.class = ipsec.ClassWrite
	default:
		return w, fmt.Errorf("class %v: an SA that permits no proxy is not the server's to make", req.GetClass())
	}
	if w.area = req.GetArea(); w.area != "" && !validArea(w.area) {
		return w, fmt.Errorf("area %q", w.area)
	}
	w.life = time.Duration(req.GetLifetimeSeconds()) * time.Second
	if w.life == 0 {
		w.life = DefaultGeneratedLifetime
	}
	if w.life < time.Minute || w.life > 7*24*time.Hour {
		return w, fmt.Errorf("lifetime %v: want 1 minute to 7 days", w.life)
	}
	return w, nil
}

// genPair is a stored generated pair: both records, their keys in the
// store, their configurations (keys wiped).
type genPair struct {
	keys    [2]SAKey
	recs    [2]Record
	cfgs    [2]ipsec.Config
	renewAt time.Time
}

// generated returns the newest generated pair between want's addresses in
// its mode (nil if none) and the older ones, which are to go.
func (s *Server) generated(want genWant) (*genPair, []genPair, error) {
	recs, err := s.store.Pair(want.local, want.remote)
	if err != nil {
		return nil, nil, err
	}
	byPeer := map[int64][]SAKey{} // records of one pair share their creation time
	for k, rec := range recs {
		if rec.Generated {
			byPeer[rec.Created.UnixNano()] = append(byPeer[rec.Created.UnixNano()], k)
		}
	}
	var pairs []genPair
	for _, ks := range byPeer {
		if len(ks) != 2 {
			continue // half a pair (a failed write): the next request makes a new one
		}
		var p genPair
		for i, k := range ks {
			c, err := s.configOf(recs[k])
			if err != nil {
				return nil, nil, err
			}
			c.WipeKeys()
			p.keys[i], p.recs[i], p.cfgs[i] = k, recs[k], c
		}
		if p.cfgs[0].Mode != want.mode {
			continue
		}
		life := p.recs[0].Expires.Sub(p.recs[0].Created)
		p.renewAt = p.recs[0].Created.Add(life * 2 / 3)
		pairs = append(pairs, p)
	}
	if len(pairs) == 0 {
		return nil, nil, nil
	}
	slices.SortFunc(pairs, func(a, b genPair) int { return b.recs[0].Created.Compare(a.recs[0].Created) })
	return &pairs[0], pairs[1:], nil
}

// replaced reports whether the caller asks for p to be replaced.
func replaced(p *genPair, ids []*pb.SAID) bool {
	for _, x := range ids {
		for _, k := range p.keys {
			if dst, ok := netip.AddrFromSlice(x.GetDst()); ok && x.GetSpi() == k.SPI && dst.Unmap() == k.Dst {
				return true
			}
		}
	}
	return false
}

// makePair generates, stores and pushes a new pair.
func (s *Server) makePair(w genWant, who string) (*genPair, error) {
	now := s.now()
	p := &genPair{renewAt: now.Add(w.life * 2 / 3)}
	for i, ends := range [2][2]netip.Addr{{w.local, w.remote}, {w.remote, w.local}} {
		c := ipsec.Config{Proto: ipsec.ESP, Src: ends[0], Dst: ends[1], Mode: w.mode, Enc: w.enc, Integ: w.integ,
			EncKey: make([]byte, w.enc.KeyLen()), IntegKey: make([]byte, w.integ.KeyLen()), ESN: true, Class: ipsec.ClassWrite,
			Lifetime: ipsec.Lifetime{SoftTime: w.life * 2 / 3, HardTime: w.life}}
		if len(c.IntegKey) == 0 {
			c.IntegKey = nil
		}
		if err := s.freshSPI(&c); err != nil {
			return nil, err
		}
		rand.Read(c.EncKey)
		rand.Read(c.IntegKey)
		b, err := proto.Marshal(toPB(&c, ipsec.ClassWrite))
		c.WipeKeys()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "generate: %v", err)
		}
		p.keys[i] = keyOf(&c)
		p.cfgs[i] = c
		p.recs[i] = Record{SA: b, Area: w.area, Owner: who, Generated: true, Created: now, Expires: now.Add(w.life), Permit: w.class}
		if err := s.store.Put(p.keys[i], [2]netip.Addr{c.Src, c.Dst}, p.recs[i]); err != nil {
			return nil, status.Errorf(codes.Unavailable, "store: %v", err)
		}
		s.audit.Info("generated", "who", who, "spi", fmt.Sprintf("%#08x", c.SPI), "dst", c.Dst.String(),
			"class", w.class.String(), "area", w.area)
	}
	s.publish(change{area: w.area, recs: p.recs[:]})
	return p, nil
}

// freshSPI gives c a random SPI in the range IKE would not reserve (RFC
// 4303 §2.1: 1–255 are reserved) that no stored SA to its destination has.
func (s *Server) freshSPI(c *ipsec.Config) error {
	for range 16 {
		var b [4]byte
		rand.Read(b[:])
		c.SPI = binary.BigEndian.Uint32(b[:])
		if c.SPI < 256 {
			continue
		}
		_, found, err := s.store.Get(keyOf(c))
		if err != nil {
			return status.Errorf(codes.Unavailable, "store: %v", err)
		}
		if !found {
			return nil
		}
	}
	return status.Error(codes.ResourceExhausted, "generate: no free SPI found")
}

// amendPair lowers the pair's class to what this caller permits and moves
// it to the caller's area, pushing the change.
func (s *Server) amendPair(p *genPair, w genWant) error {
	moved := w.area != "" && w.area != p.recs[0].Area
	if !moved && w.class >= p.recs[0].Permit {
		return nil
	}
	oldArea := p.recs[0].Area
	for i := range p.recs {
		p.recs[i].Permit = min(p.recs[i].Permit, w.class)
		if moved {
			p.recs[i].Area = w.area
		}
		if err := s.store.Put(p.keys[i], [2]netip.Addr{p.cfgs[i].Src, p.cfgs[i].Dst}, p.recs[i]); err != nil {
			return status.Errorf(codes.Unavailable, "store: %v", err)
		}
	}
	if moved && oldArea != "" {
		s.publish(change{area: oldArea, removed: saids(p.keys[:])})
	}
	s.publish(change{area: p.recs[0].Area, recs: p.recs[:]})
	return nil
}

// dropPair deletes a replaced pair and tells its area's gateways.
func (s *Server) dropPair(p genPair, who string) {
	for _, k := range p.keys {
		if err := s.store.Delete(k); err != nil {
			s.audit.Warn("generate: replaced sa not deleted", "spi", fmt.Sprintf("%#08x", k.SPI), "err", err)
			continue
		}
		s.audit.Info("replaced", "who", who, "spi", fmt.Sprintf("%#08x", k.SPI), "dst", k.Dst.String())
	}
	s.publish(change{area: p.recs[0].Area, removed: saids(p.keys[:])})
}

func saids(keys []SAKey) []*pb.SAID {
	out := make([]*pb.SAID, len(keys))
	for i, k := range keys {
		out[i] = &pb.SAID{Spi: k.SPI, Dst: k.Dst.AsSlice(), Proto: k.Proto}
	}
	return out
}

// publish tells this replica's watchers of a change, unless a Feed does
// (replicas sharing a store learn every change from it).
func (s *Server) publish(ch change) {
	if ch.area != "" && !s.shared.Load() {
		s.watchers.publish(ch)
	}
}
