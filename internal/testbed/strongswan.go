package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// StrongSwan is the pair of shared/interop/strongswan-pair.sh with a
// gateway namespace in the middle and a radio namespace, running `espep
// linkem`, between the gateway and the mobile side:
//
//	[left] l0 ── gl [gw] gr ── ra [radio: linkem] rb ── r0 [right]
//	10.77.1.1/24   .1.254  10.77.2.254             10.77.2.1/24
//	inner 10.78.1.1/32 on lo           inner 10.78.2.1/32 on lo
//
// Each end runs charon with the userspace ESP backend (kernel-libipsec,
// tunnel mode, ESP in UDP 4500), IKEv2 with a PSK; the CHILD_SA protects
// 10.78.1.1 ⇄ 10.78.2.1. charon logs the CHILD_SA keys (chd = 4) and the
// IKE SA keys (ike = 4; the PSK too) to Dir/{left,right}/charon.log.
type StrongSwan struct {
	Bed                    *Bed
	Left, GW, Radio, Right string
	Linkem                 *Proc
	Dir                    string
	// IKEProposals is the IKE SA's proposal for charon (swanctl's
	// proposals); empty means aes128-sha256-x25519.
	IKEProposals string
	charon       map[string]*Proc
}

// Addresses of the StrongSwan topology.
const (
	SSLeftOuter  = "10.77.1.1"
	SSRightOuter = "10.77.2.1"
	SSLeftInner  = "10.78.1.1"
	SSRightInner = "10.78.2.1"
)

const charonPath = "/usr/lib/ipsec/charon"

// StrongSwanAvailable reports why strongSwan cannot run here, or nil.
func StrongSwanAvailable() error {
	for _, p := range []string{charonPath, "/usr/sbin/swanctl"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("strongSwan not installed (%s): %w", p, err)
		}
	}
	return nil
}

// NewStrongSwan builds the namespaces and links and starts linkem with the
// given impairments (espep is the espep binary); StartCharon brings up
// IPsec.
func NewStrongSwan(b *Bed, espep, dir string, linkemFlags ...string) (*StrongSwan, error) {
	return NewStrongSwanWith(b, espep, dir, append([]string{"linkem", "--a", "ra", "--b", "rb"}, linkemFlags...))
}

// NewStrongSwanWith is NewStrongSwan with any espep command bridging ra
// (wire side) and rb (radio side) in the radio namespace, such as
// "gateway --wire ra --radio rb --sa FILE"; it must log "running".
func NewStrongSwanWith(b *Bed, espep, dir string, middle []string) (*StrongSwan, error) {
	return NewStrongSwanBefore(b, espep, dir, middle, nil)
}

// NewStrongSwanBefore is NewStrongSwanWith with before run once the
// namespaces are up and before the middle command starts (a service the
// middle command needs at its start, in s.Radio).
func NewStrongSwanBefore(b *Bed, espep, dir string, middle []string, before func(*StrongSwan) error) (*StrongSwan, error) {
	s := &StrongSwan{Bed: b, Dir: dir, charon: map[string]*Proc{}}
	var err error
	for _, x := range []struct {
		dst  *string
		name string
	}{{&s.Left, "left"}, {&s.GW, "gw"}, {&s.Radio, "radio"}, {&s.Right, "right"}} {
		if *x.dst, err = b.NS(x.name); err != nil {
			return nil, err
		}
	}
	steps := []func() error{
		func() error { return b.Veth(s.Left, "l0", s.GW, "gl") },
		func() error { return b.Veth(s.GW, "gr", s.Radio, "ra") },
		func() error { return b.Veth(s.Radio, "rb", s.Right, "r0") },
		func() error { return b.Addr(s.Left, "l0", SSLeftOuter+"/24") },
		func() error { return b.Addr(s.GW, "gl", "10.77.1.254/24") },
		func() error { return b.Addr(s.GW, "gr", "10.77.2.254/24") },
		func() error { return b.Addr(s.Right, "r0", SSRightOuter+"/24") },
		func() error { return b.Addr(s.Left, "lo", SSLeftInner+"/32") },
		func() error { return b.Addr(s.Right, "lo", SSRightInner+"/32") },
		func() error { return b.IP(s.Left, "route", "add", "default", "via", "10.77.1.254") },
		func() error { return b.IP(s.Right, "route", "add", "default", "via", "10.77.2.254") },
		func() error { _, err := b.Run(s.GW, "sysctl", "-qw", "net.ipv4.ip_forward=1"); return err },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	if before != nil {
		if err := before(s); err != nil {
			return nil, err
		}
	}
	if s.Linkem, err = b.Start(s.Radio, append([]string{espep}, middle...)...); err != nil {
		return nil, err
	}
	return s, waitFor(s.Linkem, " running", 10*time.Second)
}

func (s *StrongSwan) vici(side string) string {
	return "unix://" + filepath.Join(s.Dir, side, "charon.vici")
}

// StartCharon starts charon on both ends with the ESP proposal (e.g.
// aes128gcm16, aes256-sha256, chacha20poly1305), loads the configuration
// and initiates the CHILD_SA from the left, and checks it is installed.
func (s *StrongSwan) StartCharon(esp string) error {
	for _, side := range []string{"left", "right"} {
		if err := s.startOne(side, esp); err != nil {
			return err
		}
	}
	for _, side := range []string{"left", "right"} {
		out, err := exec.Command("swanctl", "--load-all", "--noprompt", "--file",
			filepath.Join(s.Dir, side, "swanctl.conf"), "--uri", s.vici(side)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("swanctl --load-all (%s): %v\n%s", side, err, out)
		}
	}
	out, err := exec.Command("swanctl", "--initiate", "--child", "pep", "--timeout", "15", "--uri", s.vici("left")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("swanctl --initiate: %v\n%s", err, out)
	}
	sas, err := s.SAs("left")
	if err != nil || !strings.Contains(sas, "INSTALLED") {
		return fmt.Errorf("CHILD_SA not installed: %v\n%s", err, sas)
	}
	return nil
}

// Rekey rekeys the CHILD_SA "pep" from one side ("left" or "right"), or
// the IKE SA from the left ("ike"), and returns once swanctl has asked.
func (s *StrongSwan) Rekey(what string) error {
	args := []string{"--rekey", "--child", "pep", "--uri", s.vici(what)}
	if what == "ike" {
		args = []string{"--rekey", "--ike", "pep", "--uri", s.vici("left")}
	}
	out, err := exec.Command("swanctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("swanctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// SAs returns `swanctl --list-sas` of one side.
func (s *StrongSwan) SAs(side string) (string, error) {
	out, err := exec.Command("swanctl", "--list-sas", "--uri", s.vici(side)).CombinedOutput()
	return string(out), err
}

func (s *StrongSwan) startOne(side, esp string) error {
	d := filepath.Join(s.Dir, side)
	if err := os.MkdirAll(filepath.Join(d, "run"), 0o700); err != nil {
		return err
	}
	ns, err := s.writeConfig(d, side, esp)
	if err != nil {
		return err
	}
	// `ip netns exec` gives charon a private mount namespace: bind a
	// directory of its own over /run for its pid file.
	p, err := s.Bed.Start(ns, "sh", "-c", fmt.Sprintf("mount --bind %s/run /run && STRONGSWAN_CONF=%s/strongswan.conf exec %s", d, d, charonPath))
	if err != nil {
		return err
	}
	s.charon[side] = p
	sock := filepath.Join(d, "charon.vici")
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("charon %s did not start:\n%s", side, p.Output())
}

// writeConfig writes one side's strongswan.conf and swanctl.conf into d
// and returns the namespace that side runs in.
func (s *StrongSwan) writeConfig(d, side, esp string) (ns string, err error) {
	ike := s.IKEProposals
	if ike == "" {
		ike = "aes128-sha256-x25519"
	}
	la, ra, lts, rts := SSLeftOuter, SSRightOuter, SSLeftInner, SSRightInner
	ns = s.Left
	if side == "right" {
		la, ra, lts, rts, ns = SSRightOuter, SSLeftOuter, SSRightInner, SSLeftInner, s.Right
	}
	conf := fmt.Sprintf(`charon {
  load_modular = no
  load = random nonce openssl aes sha1 sha2 hmac gcm chapoly curve25519 gmp kdf pem pkcs1 x509 pubkey kernel-libipsec kernel-netlink socket-default vici
  install_routes = yes
  plugins {
    vici { socket = unix://%[1]s/charon.vici }
    openssl { load_legacy = no }
  }
  filelog {
    main {
      path = %[1]s/charon.log
      time_format = %%H:%%M:%%S
      append = no
      flush_line = yes
      default = 1
      chd = 4
      ike = 4
    }
  }
  syslog { daemon { default = -1 } }
}
`, d)
	swanctl := fmt.Sprintf(`connections {
  pep {
    version = 2
    local_addrs = %s
    remote_addrs = %s
    proposals = %s
    local { auth = psk
            id = %s }
    remote { auth = psk
             id = %s }
    children {
      pep {
        local_ts = %s/32
        remote_ts = %s/32
        mode = tunnel
        esp_proposals = %s
        start_action = none
      }
    }
  }
}
secrets {
  ike-pep { id-a = left
            id-b = right
            secret = "espep-testbed-psk-not-secret" }
}
`, la, ra, ike, side, map[string]string{"left": "right", "right": "left"}[side], lts, rts, esp)
	if err := os.WriteFile(filepath.Join(d, "strongswan.conf"), []byte(conf), 0o600); err != nil {
		return "", err
	}
	return ns, os.WriteFile(filepath.Join(d, "swanctl.conf"), []byte(swanctl), 0o600)
}

// CharonLog is the path of one side's charon log (with CHILD_SA keys).
func (s *StrongSwan) CharonLog(side string) string { return filepath.Join(s.Dir, side, "charon.log") }
