// Package safile reads and writes the files that carry SA information to
// espep: Wireshark "esp_sa" UAT lines (which strongSwan's save-keys plugin
// and shared/interop/charonlog2espsa.py write) and espep's own native
// format. Bad input gives an error that names the file, the line and the
// field; nothing here panics.
//
// # Native format, version 1
//
// A UTF-8 text file. '#' starts a comment. The first non-blank line is
// "espep-sa 1". Each SA is a block that starts with a line "[sa]" followed
// by "key = value" lines:
//
//	espep-sa 1
//
//	[sa]
//	spi       = 0xc0de0001          # required, ≥ 256
//	proto     = esp                 # esp | ah
//	src       = 10.77.1.1           # sender; '*' or omitted: any (not in tunnel mode)
//	dst       = 10.77.2.1           # receiver
//	mode      = tunnel              # transport | tunnel | any (inbound: next header decides)
//	encap     = udp 4500 4500       # none | udp SRCPORT DSTPORT (RFC 3948)
//	enc       = aes-gcm16           # none null aes-cbc aes-ctr aes-gcm12 aes-gcm16 chacha20-poly1305
//	enc-key   = 0x…                 # hex; key ‖ 4-byte salt for aes-ctr, aes-gcm*, chacha20-poly1305
//	integ     = none                # none hmac-sha1-96 hmac-sha256-128 hmac-sha384-192 hmac-sha512-256
//	integ-key = 0x…
//	esn       = no                  # yes | no
//	replay-window = 64              # 32 … 65536, or off
//	class     = write               # none | read | write
//	lifetime  = soft-bytes=1G hard-bytes=2G soft-time=50m hard-time=1h
//	pmtu      = 1400                # 0: unchecked
//	ts-local  = 10.78.1.0/24        # traffic selector used by `espep pcap encrypt`
//	ts-remote = 10.78.2.1           # any | ADDR | PREFIX | FROM-TO
//	ts-proto  = tcp                 # any | tcp | udp | icmp | NUMBER
//	ts-local-ports = any            # any | PORT | FROM-TO
//	ts-remote-ports = 5001
//	ts-user   = alice               # seed SPD: user ID
//	ts-level  = 2                   # seed SPD: data sensitivity level
//
// Only spi, proto, enc/integ (as the protocol needs) and their keys are
// required. Unknown keys are errors, so that a misspelt field is never
// silently ignored. A later version bumps the number on the first line.
package safile
