package host

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/espep/espep/ipsec"
)

const example = `espep-host 1
# comment
[host]
tun = esp0
link-mtu = 1400
addr = 10.78.1.1/32
route = 10.78.2.0/24
route = fd00:78::/64
sa-file = sa.conf
udp-port = 0
metrics = 127.0.0.1:9101
state-dir = state

[policy]
name = web
local = 10.78.1.1
remote = 10.78.2.0/24
proto = tcp
remote-ports = 80-443
action = protect
sa = 0x1001
sa = 0x1003

[policy]
name = rest
action = bypass
`

const exampleSA = `espep-sa 1
[sa]
spi = 0x1001
src = 10.77.1.1
dst = 10.77.1.2
mode = transport
enc = aes-gcm16
enc-key = 0x000102030405060708090a0b0c0d0e0f10111213
[sa]
spi = 0x1003
proto = ah
src = 10.77.1.1
dst = 10.77.1.2
integ = hmac-sha1-96
integ-key = 0x000102030405060708090a0b0c0d0e0f10111213
`

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "host.conf"), []byte(example), 0o600)
	os.WriteFile(filepath.Join(dir, "sa.conf"), []byte(exampleSA), 0o600)
	c, err := LoadConfig(filepath.Join(dir, "host.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if c.TUN != "esp0" || c.LinkMTU != 1400 || c.MTU != 0 || c.UDPPort != 0 || len(c.Routes) != 2 ||
		c.Addrs[0] != netip.MustParsePrefix("10.78.1.1/32") || len(c.SAs) != 2 || c.Metrics != "127.0.0.1:9101" {
		t.Fatalf("%+v", c)
	}
	p := c.Policies[0]
	if p.Name != "web" || p.Action != ipsec.Protect || len(p.SAs) != 2 || p.SAs[1].Proto != ipsec.AH ||
		p.Selector.Proto != 6 || p.Selector.RemotePorts != (ipsec.PortRange{From: 80, To: 443}) {
		t.Fatalf("policy %+v", p)
	}
	if c.Policies[1].Action != ipsec.Bypass {
		t.Fatal("bypass")
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "x:0: empty: want"},
		{"espep-host 2\n", "x:1: version 2 not supported"},
		{"espep-host 1\ntun = x\n", "x:2: field tun: outside a section"},
		{"espep-host 1\n[host]\nmtu = 9\n", "x:3: field mtu: 9 outside"},
		{"espep-host 1\n[host]\nroute = 10.0.0.0/33\n", "x:3: field route:"},
		{"espep-host 1\n[host]\ntun = a/b\n", "x:3: field tun:"},
		{"espep-host 1\n[host]\nfoo = 1\n", "x:3: field foo: unknown field"},
		{"espep-host 1\n[policy]\naction = drop\n", "x:3: field action:"},
		{"espep-host 1\n[policy]\nremote = 10.0.0.9-10.0.0.1\n", "x:3: field remote:"},
		{"espep-host 1\n[policy]\nsa = zz\n", "x:3: field sa:"},
		{"espep-host 1\n[policy]\nproto = tcpp\n", "x:3: field proto:"},
		{"espep-host 1\nnonsense\n", "x:2: want key = value"},
	} {
		_, err := ParseConfig(strings.NewReader(tc.in), "x")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want %q", tc.in, err, tc.want)
		}
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "sa.conf"), []byte(exampleSA), 0o600)
	os.WriteFile(filepath.Join(dir, "open.conf"), []byte(exampleSA), 0o644)
	for in, want := range map[string]string{
		"espep-host 1\n[host]\nsa-file = open.conf\n":                                        "closed to group and others",
		"espep-host 1\n[host]\nsa-file = sa.conf\n[policy]\naction = protect\nsa = 0x1001\n": "give the host a state-dir",
		"espep-host 1\n[host]\nsa-file = sa.conf\n[policy]\naction = protect\nsa = 0x9999\n": "no sa with spi 0x9999",
		"espep-host 1\n[host]\nsa-file = sa.conf\n[policy]\naction = protect\n":              "protect needs sa",
		"espep-host 1\n[host]\nsa-file = missing.conf\n":                                     "no such file",
		gen("self = 10.0.0.1\n"):                                                                                   "needs self and peer",
		gen("self = 10.0.0.1\npeer = 10.0.0.1\n"):                                                                  "needs self and peer",
		gen("self = 10.0.0.1\npeer = ::1\n"):                                                                       "needs self and peer",
		gen("self = 10.0.0.1\npeer = 10.0.0.2\nproxy = none\n"):                                                    "say proxy = read or write",
		gen("self = 10.0.0.1\npeer = 10.0.0.2\nproxy = read\n"):                                                    "an AEAD SA cannot be read",
		gen("self = 10.0.0.1\npeer = 10.0.0.2\nproxy = write\n"):                                                   "give the host a state-dir",
		gen("self = 10.0.0.1\npeer = 10.0.0.2\nproxy = write\nenc = aes-cbc\n"):                                    "want an AEAD alone",
		gen("self = 10.0.0.1\npeer = 10.0.0.2\nproxy = write\nenc = aes-cbc\ninteg = hmac-sha1-96\nsa = 0x1001\n"): "sa = server and sa = SPI",
		"espep-host 1\n[host]\nsa-file = sa.conf\nstate-dir = st\n[policy]\nname = p\naction = protect\nsa = 0x1001\n[policy]\nname = p\naction = protect\nsa = server\nself = 10.0.0.1\npeer = 10.0.0.2\nproxy = write\n": "needs a name no other policy has",
		"espep-host 1\n[policy]\naction = bypass\npeer = 10.0.0.2\n": "go with action = protect and sa = server",
	} {
		p := filepath.Join(dir, "h.conf")
		os.WriteFile(p, []byte(in), 0o600)
		if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want %q", in, err, want)
		}
	}
}

// gen is a host configuration with one sa = server policy of these fields.
func gen(fields string) string {
	return "espep-host 1\n[host]\nsa-file = sa.conf\n[policy]\nname = p\naction = protect\nsa = server\n" + fields
}

// FuzzConfig: the host configuration parser never panics.
func FuzzConfig(f *testing.F) {
	f.Add(example)
	f.Add("espep-host 1\n[policy]\nsa = 0x1\nsa = 2\nsa = 3\nsa = 4\nsa = 5\n")
	f.Add(gen("self = 10.0.0.1\npeer = 10.0.0.2\nmode = tunnel\nproxy = write\nenc = aes-cbc\ninteg = hmac-sha1-96\n"))
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseConfig(strings.NewReader(s), "fuzz")
		if err != nil {
			return
		}
		if len(c.Policies) != len(c.PolicySPIs) || len(c.Policies) != len(c.PolicyGen) {
			t.Fatal("policies and bundles out of step")
		}
		c.check()
	})
}

// TestDelegable: a policy's proxy setting decides which outbound SAs the
// endpoint's agent delegates, and in what class: web traffic (proxy =
// write) yes, ssh (no proxy) never, an SA two policies share at the lesser
// of their classes; proxy = read of an AEAD SA is refused.
func TestDelegable(t *testing.T) {
	dir := t.TempDir()
	conf := `espep-host 1
[host]
sa-file = sa.conf
state-dir = state
[policy]
name = web
remote-ports = 80-443
proto = tcp
action = protect
sa = 0x1001
proxy = write
[policy]
name = ssh
remote-ports = 22
proto = tcp
action = protect
sa = 0x2001
[policy]
name = mail
remote-ports = 25
proto = tcp
action = protect
sa = 0x3001
proxy = write
[policy]
name = mail-too
remote-ports = 587
proto = tcp
action = protect
sa = 0x3001
proxy = read
`
	sas := `espep-sa 1
[sa]
spi = 0x1001
src = 10.77.1.1
dst = 10.77.1.2
mode = transport
enc = aes-gcm16
enc-key = 0x000102030405060708090a0b0c0d0e0f10111213
[sa]
spi = 0x2001
src = 10.77.1.1
dst = 10.77.1.2
mode = transport
enc = aes-gcm16
enc-key = 0x000102030405060708090a0b0c0d0e0f10111214
[sa]
spi = 0x3001
src = 10.77.1.1
dst = 10.77.1.2
mode = transport
enc = aes-cbc
enc-key = 0x000102030405060708090a0b0c0d0e0f
integ = hmac-sha256-128
integ-key = 0x000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f
`
	os.WriteFile(filepath.Join(dir, "host.conf"), []byte(conf), 0o600)
	os.WriteFile(filepath.Join(dir, "sa.conf"), []byte(sas), 0o600)
	c, err := LoadConfig(filepath.Join(dir, "host.conf"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint32]ipsec.Class{}
	for _, sa := range c.Delegable() {
		got[sa.SPI] = sa.Class
	}
	if len(got) != 2 || got[0x1001] != ipsec.ClassWrite || got[0x3001] != ipsec.ClassRead {
		t.Fatalf("delegable %v: want web's SA in write, mail's in read, ssh's not at all", got)
	}
	bad := strings.Replace(conf, "sa = 0x1001\nproxy = write", "sa = 0x1001\nproxy = read", 1)
	os.WriteFile(filepath.Join(dir, "host.conf"), []byte(bad), 0o600)
	if _, err := LoadConfig(filepath.Join(dir, "host.conf")); err == nil || !strings.Contains(err.Error(), "AEAD") {
		t.Fatalf("proxy = read of an AES-GCM SA: %v", err)
	}
	if _, err := ParseConfig(strings.NewReader("espep-host 1\n[policy]\nproxy = maybe\n"), "x"); err == nil || !strings.Contains(err.Error(), "x:3: field proxy") {
		t.Fatalf("a bad proxy value: %v", err)
	}
}
