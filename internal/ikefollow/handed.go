package ikefollow

import (
	"errors"
	"time"

	"github.com/espep/espep/internal/ikev2"
)

// Handing IKE SAs to a neighbour gateway (DESIGN.md, handoff). A gateway
// that follows a mobile's IKE SA offers its keys, bound to the IKE SA's
// SPIs, to the gateways the mobile may move to, as it offers the
// CHILD_SAs. The neighbour has not seen the IKE_SA_INIT: it learns
// nothing from it but whether ESP goes in UDP, which the offer says.
// With SK_d it follows the CREATE_CHILD_SA exchanges that come after the
// move — a CHILD_SA rekey is the next thing such a mobile's endpoints do —
// and derives their keys, as the first gateway would have.
//
// Handed keys are the neighbour's to keep only for a while: an IKE SA
// whose messages never come here lapses after the offer's TTL — it is
// forgotten, its keys wiped, at the next Keyed or AddHanded (the
// gateway's Offerer calls Keyed every second), and until then may make
// room (lookup) for another. A neighbour is trusted with keys, not with
// this gateway's table.

// KeyedSA is an IKE SA's keys as a gateway hands them over: SPIs set,
// and whether its ESP goes in UDP (RFC 3948; NAT found in IKE_SA_INIT).
type KeyedSA struct {
	Keys  ikev2.Keys
	Encap bool
}

// Keyed returns a copy of the keys of every IKE SA the follower has
// bound (the caller wipes them), for a gateway to offer its neighbours.
// IKE SAs whose keys a neighbour handed here and whose traffic has not
// come are left out: they are the neighbour's to offer.
func (f *Follower) Keyed() []KeyedSA {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forgetLapsed()
	var out []KeyedSA
	for _, sa := range f.sas {
		if sa.keys == nil || !sa.handedUntil.IsZero() {
			continue
		}
		out = append(out, KeyedSA{Keys: sa.keys.Clone(), Encap: sa.encap || sa.natFromInit()})
	}
	return out
}

// AddHanded takes an IKE SA's keys from a neighbour gateway, to keep
// until ttl has passed unless the IKE SA's messages come here. Keys the
// follower has (any source) are left as they are.
func (f *Follower) AddHanded(k KeyedSA, ttl time.Duration) (Result, error) {
	if k.Keys.SPIi == 0 || k.Keys.SPIr == 0 {
		return Result{}, errors.New("ikefollow: handed keys without their IKE SA's SPIs")
	}
	if err := k.Keys.Validate(); err != nil {
		return Result{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forgetLapsed()
	var res Result
	if f.known(&k.Keys) {
		return res, nil
	}
	s := spis{k.Keys.SPIi, k.Keys.SPIr}
	seenHere := f.sas[s] != nil
	sa := f.lookup(s, true)
	if sa == nil {
		return res, errors.New("ikefollow: no room for another IKE SA")
	}
	if sa.keys != nil {
		return res, nil // keyed here already, by a source of its own
	}
	if !seenHere {
		sa.handedUntil = f.cfg.Now().Add(ttl) // the neighbour's offer, for ttl
	}
	if !sa.encapKnown && sa.init == nil {
		sa.encap, sa.encapKnown = k.Encap, true
	}
	f.bind(sa, k.Keys.Clone())
	f.stats.Handed++
	f.release(sa, &res)
	return res, nil
}

// forgetLapsed forgets the IKE SAs whose handed keys lapsed unused
// (f.mu held).
func (f *Follower) forgetLapsed() {
	now := f.cfg.Now()
	for _, sa := range f.sas { // forget deletes from f.sas: allowed while ranging
		if !sa.handedUntil.IsZero() && now.After(sa.handedUntil) {
			f.forget(sa)
			f.stats.Evicted++
		}
	}
}

// lapsedHanded returns an IKE SA whose handed keys have lapsed unused, or
// nil (f.mu held; a scan of at most MaxIKESAs, once a second or when
// the table is full).
func (f *Follower) lapsedHanded() *ikeSA {
	now := f.cfg.Now()
	for _, sa := range f.sas {
		if !sa.handedUntil.IsZero() && now.After(sa.handedUntil) {
			return sa
		}
	}
	return nil
}
