package charonlog

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"strings"

	"github.com/espep/espep/internal/ikev2"
)

var (
	ikeProposalRE = regexp.MustCompile(`^selected proposal: IKE:(\S+)`)
	skRE          = regexp.MustCompile(`^Sk_(d|ai|ar|ei|er|pi|pr) secret => (\d+) bytes`)
	receivedRE    = regexp.MustCompile(`^received packet: from (\S+)\[\d+\] to (\S+)\[\d+\]`)
)

// IKESA is one IKE SA's keys as a charon log shows them, with the two
// addresses of the message whose processing derived them (the IKE SA's
// peers, in either order).
type IKESA struct {
	Keys  ikev2.Keys
	Peers [2]netip.Addr
}

// ParseIKE is ParseIKESAs without the addresses.
func ParseIKE(r io.Reader, name string) ([]ikev2.Keys, error) {
	sas, err := ParseIKESAs(r, name)
	out := make([]ikev2.Keys, len(sas))
	for i := range sas {
		out[i] = sas[i].Keys
	}
	return out, err
}

// ParseIKESAs reads one charon log written with the IKE log level at 4
// ("ike = 4", which also dumps the Diffie-Hellman secret, SKEYSEED and a
// PSK) and returns the keys of every IKE SA it derived — the first one and
// every rekey — with the transforms charon selected, in the order they
// appear. charon prints no SPIs with its keys: they are zero, to be bound
// to the IKE SA whose messages they verify. SK_pi and SK_pr are left out
// (a gateway following IKE must not be able to authenticate as a peer).
func ParseIKESAs(r io.Reader, name string) ([]IKESA, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 1<<20)
	type state struct {
		proposal string
		dump
		peers [2]netip.Addr // of the last packet the thread received
	}
	threads := map[string]*state{}
	var last string // the last IKE proposal selected by any thread
	var out []IKESA
	for n := 1; sc.Scan(); n++ {
		m := lineRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		tid, group, msg := m[1], m[2], m[3]
		th := threads[tid]
		if th == nil {
			th = &state{}
			threads[tid] = th
		}
		if group == "NET" {
			if mm := receivedRE.FindStringSubmatch(msg); mm != nil {
				a, err1 := netip.ParseAddr(mm[1])
				b, err2 := netip.ParseAddr(mm[2])
				if err1 == nil && err2 == nil {
					th.peers = [2]netip.Addr{a, b}
				}
			}
			continue
		}
		if group == "CFG" {
			if mm := ikeProposalRE.FindStringSubmatch(msg); mm != nil {
				th.proposal, last = mm[1], mm[1]
			}
			continue
		}
		if group != "IKE" {
			continue
		}
		if ok, err := th.hexLine(msg); ok {
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", name, n, err)
			}
			continue
		}
		mm := skRE.FindStringSubmatch(msg)
		if mm == nil {
			continue
		}
		if mm[1] == "d" {
			clear(th.keys)
		}
		if mm[1] != "pi" {
			th.start(mm[1])
			continue
		}
		// SK_pi comes after the keys a gateway needs: this IKE SA's
		// are complete. The responder derives them in another thread
		// than the one that selected the proposal.
		prop := th.proposal
		if prop == "" {
			prop = last
		}
		k, err := ikeKeys(prop, th.keys)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		out = append(out, IKESA{Keys: k, Peers: th.peers})
		th.dump = dump{}
		th.proposal = ""
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

// ikeKeys makes the Keys of one IKE SA from charon's proposal (such as
// AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519) and its
// key dumps.
func ikeKeys(proposal string, dump map[string][]byte) (ikev2.Keys, error) {
	k := ikev2.Keys{D: dump["d"], Ai: dump["ai"], Ar: dump["ar"], Ei: dump["ei"], Er: dump["er"]}
	if proposal == "" {
		return k, fmt.Errorf("IKE keys before any selected IKE proposal")
	}
	for _, p := range strings.Split(proposal, "/") {
		switch {
		case strings.HasPrefix(p, "AES_CBC_"):
			k.Encr = ikev2.EncrAESCBC
		case strings.HasPrefix(p, "AES_GCM_16_"):
			k.Encr = ikev2.EncrAESGCM16
		case strings.HasPrefix(p, "AES_GCM_12_"):
			k.Encr = ikev2.EncrAESGCM12
		case strings.HasPrefix(p, "AES_GCM_8_"):
			k.Encr = ikev2.EncrAESGCM8
		case strings.HasPrefix(p, "CHACHA20_POLY1305"):
			k.Encr = ikev2.EncrChaCha20Poly1305
		case strings.HasPrefix(p, "PRF_"):
			id, ok := prfByName[strings.TrimPrefix(p, "PRF_")]
			if !ok {
				return k, fmt.Errorf("IKE proposal %s: PRF %s not supported", proposal, p)
			}
			k.PRF = id
		default:
			if id, ok := ikeIntegByName[p]; ok {
				k.Integ = id
			}
		}
	}
	if err := k.Validate(); err != nil {
		return k, fmt.Errorf("IKE proposal %s: %w", proposal, err)
	}
	return k, nil
}

var prfByName = map[string]uint16{
	"HMAC_SHA1": ikev2.PRFHMACSHA1, "HMAC_SHA2_256": ikev2.PRFHMACSHA2256,
	"HMAC_SHA2_384": ikev2.PRFHMACSHA2384, "HMAC_SHA2_512": ikev2.PRFHMACSHA2512,
}

var ikeIntegByName = map[string]uint16{
	"HMAC_SHA1_96": ikev2.IntegHMACSHA196, "HMAC_SHA2_256_128": ikev2.IntegHMACSHA2256128,
	"HMAC_SHA2_384_192": ikev2.IntegHMACSHA2384192, "HMAC_SHA2_512_256": ikev2.IntegHMACSHA2512256,
}
