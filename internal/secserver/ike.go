package secserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/espep/espep/internal/ikefollow"
	"github.com/espep/espep/internal/ikev2"
	"github.com/espep/espep/internal/pki"
	"github.com/espep/espep/internal/secserver/pb"
	"github.com/espep/espep/ipsec"
)

// IKE SA keys (scheme 2). They are kept as records of their own kind in
// the same store, sealed the same way, indexed by the IKE SA's address
// pair, under a key of their own: SPI 0 (no SA has it), the responder's
// address, and "ike-" with a digest of SK_d (an uploader need not know
// the IKE SA's SPIs). An agent may upload the keys of an IKE SA one of
// whose addresses it owns; a gateway gets them with the pair's SAs only
// if it serves the area they came from and asks for the write class —
// whoever holds them derives every CHILD_SA's keys, so they are at least
// as sensitive as a write SA. Every release and refusal is audited.

// IKEProtoPrefix starts the protocol field of an IKE key record's key.
const IKEProtoPrefix = "ike-"

// Bounds on how long IKE keys are kept.
const (
	DefaultIKELife = 24 * time.Hour
	MaxIKELife     = 7 * 24 * time.Hour
)

// IKEUpload is one IKE SA's keys as an agent uploads them: its two
// addresses and how long they are kept (0: DefaultIKELife).
type IKEUpload struct {
	Keys                 ikev2.Keys
	Initiator, Responder netip.Addr
	Life                 time.Duration
}

// ikeKeyOf is the store key of an IKE SA's keys.
func ikeKeyOf(responder netip.Addr, skd []byte) SAKey {
	h := sha256.Sum256(append([]byte("espep ike key id 1\x00"), skd...))
	return SAKey{SPI: 0, Dst: responder, Proto: IKEProtoPrefix + hex.EncodeToString(h[:8])}
}

// ikeToPB is the wire form of an upload.
func ikeToPB(u *IKEUpload) *pb.IKEKeys {
	prf, encr, integ := ikefollow.TransformNames(&u.Keys)
	k := &u.Keys
	return &pb.IKEKeys{Initiator: u.Initiator.AsSlice(), Responder: u.Responder.AsSlice(), SpiI: k.SPIi, SpiR: k.SPIr,
		Prf: prf, Encr: encr, Integ: integ, SkD: clone(k.D), SkAi: clone(k.Ai), SkAr: clone(k.Ar), SkEi: clone(k.Ei), SkEr: clone(k.Er),
		HardSeconds: int64(u.Life / time.Second)}
}

// ikeFromPB reads and checks the wire form (the keys are copies).
func ikeFromPB(x *pb.IKEKeys) (IKEUpload, error) {
	var u IKEUpload
	var ok1, ok2 bool
	u.Initiator, ok1 = netip.AddrFromSlice(x.GetInitiator())
	u.Responder, ok2 = netip.AddrFromSlice(x.GetResponder())
	if !ok1 || !ok2 || u.Initiator.Is4() != u.Responder.Is4() {
		return u, fmt.Errorf("ike keys: addresses of %d and %d bytes", len(x.GetInitiator()), len(x.GetResponder()))
	}
	k := &u.Keys
	k.SPIi, k.SPIr = x.GetSpiI(), x.GetSpiR()
	if (k.SPIi == 0) != (k.SPIr == 0) {
		return u, fmt.Errorf("ike keys: one SPI of two")
	}
	var err error
	for _, t := range []struct {
		kind, name string
		dst        *uint16
	}{{"prf", x.GetPrf(), &k.PRF}, {"encr", x.GetEncr(), &k.Encr}, {"integ", x.GetInteg(), &k.Integ}} {
		if *t.dst, err = ikefollow.TransformID(t.kind, t.name); err != nil {
			return u, fmt.Errorf("ike keys: %w", err)
		}
	}
	k.D, k.Ai, k.Ar, k.Ei, k.Er = clone(x.GetSkD()), clone(x.GetSkAi()), clone(x.GetSkAr()), clone(x.GetSkEi()), clone(x.GetSkEr())
	if err := k.Validate(); err != nil {
		k.Wipe()
		return u, fmt.Errorf("ike keys: %w", err)
	}
	switch s := x.GetHardSeconds(); {
	case s < 0 || time.Duration(s)*time.Second > MaxIKELife:
		k.Wipe()
		return u, fmt.Errorf("ike keys: kept %d s: at most %v", s, MaxIKELife)
	case s == 0:
		u.Life = DefaultIKELife
	default:
		u.Life = time.Duration(s) * time.Second
	}
	return u, nil
}

// refuseIKE audits and returns a refusal of one IKE SA's keys.
func (s *Server) refuseIKE(call, who string, u *IKEUpload, code codes.Code, why string) error {
	s.audit.Warn("refused", "call", call, "who", who, "ike", u.Initiator.String()+"-"+u.Responder.String(), "why", why)
	return status.Errorf(code, "ike sa %v–%v: %s", u.Initiator, u.Responder, why)
}

// UploadIKE stores the keys of IKE SAs of an agent's endpoint.
func (s *Server) UploadIKE(ctx context.Context, req *pb.UploadIKERequest) (*pb.UploadReply, error) {
	id, who, err := s.caller(ctx, "upload-ike", pki.RoleAgent)
	if err != nil {
		return nil, err
	}
	if len(req.GetKeys()) > MaxUpload {
		return nil, status.Errorf(codes.InvalidArgument, "%d IKE SAs in one upload: at most %d", len(req.GetKeys()), MaxUpload)
	}
	if a := req.GetArea(); a != "" && !validArea(a) {
		return nil, status.Errorf(codes.InvalidArgument, "area %q", a)
	}
	type take struct {
		key  SAKey
		pair [2]netip.Addr
		rec  Record
	}
	var takes []take
	for i, x := range req.GetKeys() {
		u, err := ikeFromPB(x)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "ike sa %d: %v", i, err)
		}
		u.Keys.Wipe() // checked; what is stored is the wire form
		if !id.Owns(u.Initiator) && !id.Owns(u.Responder) {
			return nil, s.refuseIKE("upload-ike", who, &u, codes.PermissionDenied, fmt.Sprintf("neither address belongs to %q", id.Name))
		}
		b, err := proto.Marshal(x)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "ike sa %d: %v", i, err)
		}
		k := ikeKeyOf(u.Responder, x.GetSkD())
		old, found, err := s.store.Get(k)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "store: %v", err)
		}
		if found && (!old.IKE || nameOf(old.Owner) != nameOf(who)) {
			continue // the peer's agent gave the same IKE SA's keys: no change
		}
		takes = append(takes, take{k, [2]netip.Addr{u.Initiator, u.Responder},
			Record{SA: b, Area: req.GetArea(), Owner: who, Expires: s.now().Add(u.Life), IKE: true}})
	}
	for _, t := range takes {
		if err := s.store.Put(t.key, t.pair, t.rec); err != nil {
			return nil, status.Errorf(codes.Unavailable, "store: %v", err)
		}
		s.audit.Info("stored", "who", who, "ike", t.pair[0].String()+"-"+t.pair[1].String(), "key", t.key.Proto, "area", t.rec.Area)
	}
	if len(takes) > 0 && req.GetArea() != "" && !s.shared.Load() {
		ch := change{area: req.GetArea()}
		for _, t := range takes {
			ch.recs = append(ch.recs, t.rec)
		}
		s.watchers.publish(ch)
	}
	return &pb.UploadReply{Stored: uint32(len(req.GetKeys()))}, nil
}

// grantIKE is what gateway id may have of stored IKE keys: nil for
// expired ones, and for a gateway that asks for read (it asked for SAs
// it may read, not for keys that derive every CHILD_SA's: nothing to
// refuse), the keys (audited as released), or a refusal (audited).
func (s *Server) grantIKE(id pki.Identity, who, call string, rec Record, want ipsec.Class, now time.Time) (*pb.IKEKeys, error) {
	if want != ipsec.ClassWrite {
		return nil, nil
	}
	var x pb.IKEKeys
	if err := proto.Unmarshal(rec.SA, &x); err != nil {
		return nil, status.Errorf(codes.Internal, "stored ike keys: %v", err)
	}
	u, err := ikeFromPB(&x)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "stored %v", err)
	}
	u.Keys.Wipe()
	switch {
	case !rec.Expires.IsZero() && !now.Before(rec.Expires):
		return nil, nil
	case !id.Serves(rec.Area):
		return nil, s.refuseIKE(call, who, &u, codes.PermissionDenied, fmt.Sprintf("uploaded from area %q, which %q does not serve", rec.Area, id.Name))
	}
	s.audit.Info("released", "call", call, "who", who, "ike", u.Initiator.String()+"-"+u.Responder.String(), "class", "write")
	return &x, nil
}

// withdrawIKE removes IKE keys the caller uploaded (an agent whose
// endpoint deleted the IKE SA).
func (s *Server) withdrawIKE(id pki.Identity, who string, k SAKey, rec Record) error {
	var x pb.IKEKeys
	if err := proto.Unmarshal(rec.SA, &x); err != nil {
		return status.Errorf(codes.Internal, "stored ike keys: %v", err)
	}
	u, err := ikeFromPB(&x)
	if err != nil {
		return status.Errorf(codes.Internal, "stored %v", err)
	}
	u.Keys.Wipe()
	if !id.Owns(u.Initiator) && !id.Owns(u.Responder) || nameOf(rec.Owner) != nameOf(who) {
		return s.refuseIKE("withdraw", who, &u, codes.PermissionDenied, fmt.Sprintf("uploaded by %s", nameOf(rec.Owner)))
	}
	if err := s.store.Delete(k); err != nil {
		return status.Errorf(codes.Unavailable, "store: %v", err)
	}
	s.audit.Info("withdrawn", "who", who, "ike", u.Initiator.String()+"-"+u.Responder.String(), "key", k.Proto)
	if !s.shared.Load() {
		s.watchers.publish(change{area: rec.Area, removed: []*pb.SAID{{Spi: 0, Dst: k.Dst.AsSlice(), Proto: k.Proto}}})
	}
	return nil
}
