package main

import (
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"strings"
	"time"

	"github.com/espep/espep/internal/pki"
)

const pkiUsage = `usage: espep pki init   --ca DIR [--name NAME] [--days N]
       espep pki issue  --ca DIR --role secserver|gateway|agent --name NAME
                        [--ip ADDR…] [--prefix NET…] [--area AREA…] [--dns NAME…]
                        [--days N] --out PREFIX
       espep pki revoke --ca DIR (--cert FILE | --serial N)
       espep pki crl    --ca DIR
       espep pki show   FILE

The control plane's private CA. init makes the CA in DIR (ca.crt, ca.key
closed to group and others, ca.crl). issue writes PREFIX.crt and PREFIX.key
for one holder, its identity inside: its role; the addresses it owns
(--ip); for an agent on a router, the networks it protects (--prefix); for a
gateway, the base-station areas it serves (--area); for a server, its names
(--dns). revoke adds a certificate to ca.crl; crl signs ca.crl again with
new dates (it is current for 30 days). show prints a certificate's identity.

flags:
`

func runPki(args []string, stdout, stderr io.Writer) error {
	verbs := map[string]bool{"init": true, "issue": true, "revoke": true, "crl": true, "show": true}
	if len(args) == 0 || !verbs[args[0]] {
		fmt.Fprint(stderr, pkiUsage)
		return usageError{"pki: want init, issue, revoke, crl or show"}
	}
	verb := args[0]
	fs := flag.NewFlagSet("pki "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("ca", "", "CA directory")
	name := fs.String("name", "", "subject name (init: the CA's)")
	days := fs.Int("days", 0, "validity in days (init: 3650, issue: 365)")
	role := fs.String("role", "", "issue: secserver, gateway or agent")
	out := fs.String("out", "", "issue: write PREFIX.crt and PREFIX.key")
	certFile := fs.String("cert", "", "revoke: the certificate to take back")
	serial := fs.String("serial", "", "revoke: its serial number (decimal)")
	var ips, prefixes, areas, dns stringList
	fs.Var(&ips, "ip", "issue: an address the holder owns (repeatable)")
	fs.Var(&prefixes, "prefix", "issue: a network an agent's router protects (repeatable)")
	fs.Var(&areas, "area", "issue: an area a gateway serves (repeatable)")
	fs.Var(&dns, "dns", "issue: a name a server answers to (repeatable)")
	fs.Usage = func() { fmt.Fprint(stderr, pkiUsage); fs.PrintDefaults() }
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err.Error()}
	}
	if verb == "show" {
		if fs.NArg() != 1 {
			return usageError{"pki show: want one certificate file"}
		}
		return pkiShow(fs.Arg(0), stdout)
	}
	if *dir == "" || fs.NArg() != 0 {
		fs.Usage()
		return usageError{"pki " + verb + ": need --ca DIR and no arguments"}
	}
	switch verb {
	case "init":
		if *name == "" {
			*name = "espep CA"
		}
		ca, err := pki.Init(*dir, *name, daysOr(*days, 3650))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "CA %q in %s, valid until %s\n", *name, *dir, ca.Cert.NotAfter.Format(time.DateOnly))
		return nil
	case "issue":
		id := pki.Identity{Role: pki.Role(*role), Name: *name, Areas: areas, DNS: dns}
		for _, s := range ips {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return usageError{fmt.Sprintf("pki issue: --ip %q: %v", s, err)}
			}
			id.Addrs = append(id.Addrs, a)
		}
		for _, s := range prefixes {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return usageError{fmt.Sprintf("pki issue: --prefix %q: %v", s, err)}
			}
			id.Prefixes = append(id.Prefixes, p)
		}
		if *out == "" {
			return usageError{"pki issue: need --out PREFIX"}
		}
		return pkiIssue(*dir, id, daysOr(*days, 365), *out, stdout)
	case "revoke":
		return pkiRevoke(*dir, *certFile, *serial, stdout)
	default: // crl
		ca, err := pki.Open(*dir)
		if err != nil {
			return err
		}
		return ca.Renew()
	}
}

func daysOr(n, def int) time.Duration {
	if n <= 0 {
		n = def
	}
	return time.Duration(n) * 24 * time.Hour
}

func pkiIssue(dir string, id pki.Identity, validity time.Duration, out string, stdout io.Writer) error {
	ca, err := pki.Open(dir)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.Issue(id, validity)
	if err != nil {
		return err
	}
	if err := pki.WriteFile(out+".key", keyPEM, 0o600); err != nil {
		return err
	}
	if err := pki.WriteFile(out+".crt", certPEM, 0o644); err != nil {
		return err
	}
	return pkiShow(out+".crt", stdout)
}

func pkiRevoke(dir, certFile, serial string, stdout io.Writer) error {
	n := new(big.Int)
	switch {
	case certFile != "" && serial == "":
		c, err := pki.LoadCert(certFile)
		if err != nil {
			return err
		}
		n = c.SerialNumber
	case serial != "" && certFile == "":
		if _, ok := n.SetString(serial, 10); !ok {
			return usageError{fmt.Sprintf("pki revoke: --serial %q: not a decimal number", serial)}
		}
	default:
		return usageError{"pki revoke: want --cert FILE or --serial N"}
	}
	ca, err := pki.Open(dir)
	if err != nil {
		return err
	}
	if err := ca.Revoke(n); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked serial %s; distribute %s/ca.crl\n", n, dir)
	return nil
}

func pkiShow(path string, stdout io.Writer) error {
	c, err := pki.LoadCert(path)
	if err != nil {
		return err
	}
	id, err := pki.IdentityOf(c)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s %q serial %s, valid %s to %s", path, id.Role, id.Name, c.SerialNumber,
		c.NotBefore.Format(time.DateOnly), c.NotAfter.Format(time.DateOnly))
	for _, a := range id.Addrs {
		fmt.Fprintf(&b, " ip=%v", a)
	}
	for _, p := range id.Prefixes {
		fmt.Fprintf(&b, " prefix=%v", p)
	}
	for _, a := range id.Areas {
		fmt.Fprintf(&b, " area=%s", a)
	}
	for _, d := range id.DNS {
		fmt.Fprintf(&b, " dns=%s", d)
	}
	fmt.Fprintln(stdout, b.String())
	return nil
}
