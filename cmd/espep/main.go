// Command espep is the one binary of espep, the IPsec-aware TCP
// performance-enhancing proxy. Each subcommand is a thin layer of flags
// over a package under internal/ or the public ipsec package.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/pprof"
)

// command is a subcommand: run gets the arguments after its name.
type command struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"lab", "the whole network in one process: e2e vs. snoop vs. split, with IPsec", runLab},
	{"pcap", "decrypt or encrypt the ESP/AH packets of a capture with known SAs", runPcap},
	{"gateway", "the IPsec-aware PEP between a wired and a radio interface", runGateway},
	{"linkem", "forward frames between two interfaces through an emulated radio link", runLinkem},
	{"host", "a userspace IPsec endpoint (TUN device, SPD, SAD)", runHost},
	{"pki", "the control plane's private CA: certificates with roles, addresses, areas", runPki},
	{"agent", "on an endpoint: delegate its SAs to the security server", runAgent},
	{"secserver", "the security server: agents delegate SAs, gateways fetch them (gRPC, mutual TLS)", runSecserver},
	{"neighbours", "find neighbour gateways by TTL-limited multicast probes", runNeighbours},
	{"version", "print the version", runVersion},
}

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	// ESPEP_CPUPROFILE=FILE writes a CPU profile of the whole run (go tool
	// pprof FILE): how an operator or a harness sees where a gateway's
	// cycles go.
	if path := os.Getenv("ESPEP_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
			defer f.Close()
			defer pprof.StopCPUProfile()
		}
	}
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "espep:", err)
		os.Exit(exitCode(err))
	}
}

// usageError is an error in how espep was called: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func exitCode(err error) int {
	if _, ok := err.(usageError); ok {
		return 2
	}
	return 1
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return usageError{"no subcommand"}
		}
		return nil
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	usage(stderr)
	return usageError{fmt.Sprintf("unknown subcommand %q", args[0])}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: espep SUBCOMMAND [flags]\n\nsubcommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
}

func runVersion(_ []string, stdout, _ io.Writer) error {
	fmt.Fprintln(stdout, "espep", version)
	return nil
}
