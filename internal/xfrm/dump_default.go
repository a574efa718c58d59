//go:build !linux

package xfrm

import (
	"errors"

	"github.com/espep/espep/ipsec"
)

// Dump is Linux's.
func Dump() ([]ipsec.Config, []error, error) {
	return nil, nil, errors.New("xfrm: the kernel SAD is Linux's")
}
