package tunlink

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// Routes is the policy routing that makes the kernel hand each side's
// traffic to the gateway: what arrives on the wire interface is routed
// into the wire device (table Table), what arrives on the radio
// interface into the radio device (table Table+1), for IPv4 and IPv6:
//
//	ip rule add iif WIRE lookup T pref P     ip route add default dev TUN-WIRE table T
//	ip rule add iif RADIO lookup T+1 pref P  ip route add default dev TUN-RADIO table T+1
//
// What the gateway writes into a device the kernel routes by its main
// table, out of the other interface. The routes go with the devices; the
// rules are removed by the undo Install returns.
type Routes struct {
	Wire, Radio string // the interfaces the two sides' traffic arrives on
	Table       int    // routing table for the wire side; Table+1 for the radio side (default 100)
	Pref        int    // the rules' preference (default 1000)
}

// ip runs the ip command.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Up brings both devices up (the kernel routes nothing into a device
// that is down).
func (l *Link) Up() error {
	for _, n := range l.names {
		if err := ip("link", "set", "dev", n, "up"); err != nil {
			return fmt.Errorf("tunlink: %w", err)
		}
	}
	return nil
}

// Install adds the rules and routes r describes; undo removes the rules
// (the routes go with the devices). A rule a predecessor left (killed
// before it could remove it) is replaced, so a restart is a normal
// event. On error, what was added is removed.
func (l *Link) Install(r Routes) (undo func(), err error) {
	if r.Wire == "" || r.Radio == "" {
		return nil, fmt.Errorf("tunlink: routes need the wire and the radio interface")
	}
	if r.Table == 0 {
		r.Table = 100
	}
	if r.Pref == 0 {
		r.Pref = 1000
	}
	var dels [][]string
	undo = func() {
		for _, d := range dels {
			ip(d...)
		}
	}
	for side, iface := range [2]string{r.Wire, r.Radio} {
		table := strconv.Itoa(r.Table + side)
		for _, fam := range []string{"-4", "-6"} {
			rule := []string{fam, "rule", "add", "iif", iface, "lookup", table, "pref", strconv.Itoa(r.Pref)}
			del := append([]string(nil), rule...)
			del[2] = "del"
			for i := 0; i < 4 && ip(del...) == nil; i++ {
			}
			if err := ip(fam, "route", "replace", "default", "dev", l.names[side], "table", table); err != nil {
				undo()
				return nil, fmt.Errorf("tunlink: %w", err)
			}
			if err := ip(rule...); err != nil {
				undo()
				return nil, fmt.Errorf("tunlink: %w", err)
			}
			dels = append(dels, del)
		}
	}
	return undo, nil
}
