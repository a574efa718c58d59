package keyval

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The value forms every format shares, with the same limits everywhere.

// Bool reads yes/no (also true/false, on/off).
func Bool(s string) (bool, error) {
	switch s {
	case "yes", "true", "on":
		return true, nil
	case "no", "false", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q: want yes or no", s)
}

// Count reads a whole number from 1 to 2^30.
func Count(s string) (int, error) {
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 || v > 1<<30 {
		return 0, fmt.Errorf("%q: want a whole number from 1 to 2^30", s)
	}
	return v, nil
}

// Duration reads a Go duration from 1ns to 24h ("250ms", "2m").
func Duration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > 24*time.Hour {
		return 0, fmt.Errorf("%q: want a duration from 1ns to 24h", s)
	}
	return d, nil
}

// Bytes reads a size: a whole number with an optional unit, k/K/KB
// (1000), KiB (1024), M/MB, MiB, G/GB, GiB; from 1 byte to 64 GiB.
func Bytes(s string) (int, error) {
	num := strings.TrimRight(s, "KMGBikg")
	unit := s[len(num):]
	mult, ok := map[string]int64{"": 1, "k": 1e3, "K": 1e3, "KB": 1e3, "KiB": 1 << 10, "M": 1e6, "MB": 1e6, "MiB": 1 << 20,
		"G": 1e9, "GB": 1e9, "GiB": 1 << 30}[unit]
	v, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if !ok || err != nil || v <= 0 || v > (64<<30)/mult {
		return 0, fmt.Errorf("%q: want a size such as 4MiB, from 1 byte to 64GiB", s)
	}
	return int(v * mult), nil
}
