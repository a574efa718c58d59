package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/espep/espep/internal/pcaptool"
	"github.com/espep/espep/ipsec"
	"github.com/espep/espep/ipsec/safile"
)

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

const pcapUsage = `usage: espep pcap decrypt --sa FILE [--sa FILE…] [flags] IN.pcap OUT.pcap
       espep pcap encrypt --sa FILE [--sa FILE…] [flags] IN.pcap OUT.pcap

decrypt writes every ESP/AH packet an SA opens as the packet inside it and
copies every other packet; encrypt seals every packet an SA's selectors
match. --sa takes Wireshark esp_sa lines (strongSwan save-keys) or espep's
native SA format. A summary goes to stderr.

flags:
`

func runPcap(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "decrypt" && args[0] != "encrypt") {
		fmt.Fprint(stderr, pcapUsage)
		return usageError{"pcap: want decrypt or encrypt"}
	}
	verb := args[0]
	fs := flag.NewFlagSet("pcap "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var sas stringList
	fs.Var(&sas, "sa", "SA file (repeatable)")
	window := fs.Int("replay-window", 0, "decrypt: override every SA's replay window (32…65536; -1: off)")
	fs.Usage = func() { fmt.Fprint(stderr, pcapUsage); fs.PrintDefaults() }
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err.Error()}
	}
	if len(sas) == 0 || fs.NArg() != 2 {
		fs.Usage()
		return usageError{"pcap " + verb + ": need --sa FILE, IN and OUT"}
	}
	var cfgs []ipsec.Config
	for _, p := range sas {
		c, err := safile.Load(p)
		if err != nil {
			return err
		}
		cfgs = append(cfgs, c...)
	}
	if *window != 0 {
		for i := range cfgs {
			cfgs[i].ReplayWindow = *window
		}
	}
	in, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(fs.Arg(1))
	if err != nil {
		return err
	}
	defer out.Close()
	var summary fmt.Stringer
	if verb == "decrypt" {
		var sad ipsec.SAD
		for _, c := range cfgs {
			e, err := ipsec.NewEntry(c)
			if err != nil {
				return err
			}
			if err := sad.Add(e); err != nil {
				return err
			}
		}
		st, err := pcaptool.Decrypt(in, out, &sad)
		if err != nil {
			return fmt.Errorf("pcap decrypt %s: %w", fs.Arg(0), err)
		}
		summary = st
	} else {
		sealers, err := pcaptool.SealersFor(cfgs)
		if err != nil {
			return err
		}
		st, err := pcaptool.Encrypt(in, out, sealers)
		if err != nil {
			return fmt.Errorf("pcap encrypt %s: %w", fs.Arg(0), err)
		}
		summary = st
	}
	if err := out.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "espep pcap %s: %v\n", verb, summary)
	return nil
}
