package ipsec

import "testing"

// Helpers shared with the external test package (interop tests use safile,
// which imports ipsec).
var (
	TCPPacket = tcpPacket
	InBuf     = inBuf
	Key       = key
)

type ScapyVector = scapyVector

func LoadScapyVectors(t testing.TB) []ScapyVector { return loadScapyVectors(t) }

func (v *scapyVector) Config(t testing.TB) Config { return v.config(t) }
