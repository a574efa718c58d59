#!/usr/bin/python3
"""Hostile frames for espep's gateway, built with scapy: valid-looking
packets with one field wrong — every AH length, ESP cut short and with bad
UDP lengths, IPv4 headers whose lengths lie, IPv6 extension chains that run
off the packet or go on too long, first and later fragments, IP-in-IP
nested deep and cut short, cleartext TCP aimed at the protected flow with
every flag and broken options — sent at L2 onto IFACE toward DST_MAC.

usage: hostile.py IFACE DST_MAC OUTER_SRC OUTER_DST INNER_SRC INNER_DST SPI[,SPI…] ROUNDS SEED
"""
import random
import struct
import sys

from scapy.all import (AH, ESP, IP, UDP, TCP, Ether, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                       IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, Raw, sendp, raw, conf)

conf.verb = 0
iface, dmac, osrc, odst, isrc, idst, spis, rounds, seed = sys.argv[1:10]
spis = [int(s, 0) for s in spis.split(",")]
rounds, rng = int(rounds), random.Random(int(seed))
o6src, o6dst = "fd00:77::1", "fd00:77::2"


def rand_bytes(n):
    return bytes(rng.getrandbits(8) for _ in range(n))


def esp(spi, seq, n):
    return struct.pack("!II", spi, seq) + rand_bytes(n)


def frames():
    out = []
    spi = rng.choice(spis)
    # AH: every Payload Len, over IPv4 and IPv6, real and unknown SPIs.
    for plen in range(256):
        ah = bytes([6, plen, 0, 0]) + struct.pack("!II", rng.choice(spis + [0x1234]), rng.getrandbits(32)) + rand_bytes(rng.choice([0, 12, 64, 300]))
        out.append(IP(src=osrc, dst=odst, proto=51) / Raw(ah))
        out.append(IPv6(src=o6src, dst=o6dst, nh=51) / Raw(ah))
    # ESP, raw and in UDP 4500, every length up to 64, huge sequence numbers.
    for n in range(0, 64):
        out.append(IP(src=osrc, dst=odst, proto=50) / Raw(esp(spi, rng.getrandbits(32), n)))
        out.append(IP(src=osrc, dst=odst) / UDP(sport=4500, dport=4500) / Raw(esp(spi, 1 << 31, n)))
    for ulen in (0, 1, 7, 8, 9, 20, 1000, 65535):
        u = IP(src=osrc, dst=odst) / UDP(sport=4500, dport=4500, len=ulen) / Raw(esp(spi, 5, 40))
        out.append(u)
    out.append(IP(src=osrc, dst=odst) / UDP(sport=4500, dport=4500) / Raw(b"\x00\x00\x00\x00" + rand_bytes(30)))  # non-ESP marker
    out.append(IP(src=osrc, dst=odst) / UDP(sport=4500, dport=4500) / Raw(b"\xff"))  # keepalive
    for s in range(0, 256, 17):
        out.append(IP(src=osrc, dst=odst, proto=50) / Raw(esp(s, 1, 40)))  # reserved SPIs
    # IPv4 headers whose lengths lie, options, fragments.
    for ihl in (0, 1, 4, 6, 15):
        p = IP(src=osrc, dst=odst, proto=50, ihl=ihl) / Raw(esp(spi, 9, 60))
        out.append(p)
    for tl in (0, 19, 20, 21, 100, 65535):
        out.append(IP(src=osrc, dst=odst, proto=50, len=tl) / Raw(esp(spi, 9, 60)))
    out.append(IP(src=osrc, dst=odst, proto=50, options=b"\x07\x27" + b"\x00" * 38) / Raw(esp(spi, 9, 60)))
    for flags, frag in ((1, 0), (0, 8), (1, 8), (0, 8191)):
        out.append(IP(src=osrc, dst=odst, proto=50, flags=flags, frag=frag) / Raw(esp(spi, 9, 60)))
    # IPv6 extension chains: too long, running off the packet, routing,
    # fragments (first, later, atomic), ESP and AH after them.
    chain = IPv6(src=o6src, dst=o6dst)
    for _ in range(20):
        chain = chain / IPv6ExtHdrDestOpt()
    out.append(chain / Raw(esp(spi, 3, 40)))
    hbh = raw(IPv6(src=o6src, dst=o6dst, nh=0) / Raw(bytes([50, 200]) + b"\x00" * 6 + esp(spi, 3, 20)))
    out.append(IPv6(hbh))
    out.append(IPv6(src=o6src, dst=o6dst) / IPv6ExtHdrRouting() / Raw(esp(spi, 3, 40)))
    for off, m in ((0, 1), (10, 0), (10, 1), (0, 0)):
        out.append(IPv6(src=o6src, dst=o6dst) / IPv6ExtHdrFragment(nh=50, offset=off, m=m) / Raw(esp(spi, 3, 40)))
        out.append(IPv6(src=o6src, dst=o6dst) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(nh=6, offset=off, m=m) /
                   TCP(sport=5001, dport=40000, flags="R"))
    for plen in (0, 1, 39, 41, 65535):
        out.append(IPv6(src=o6src, dst=o6dst, nh=50, plen=plen) / Raw(esp(spi, 3, 40)))
    # IP-in-IP nested 1 to 6 deep, with the real SPI inside, and cut short.
    for depth in range(1, 7):
        p = IP(src=osrc, dst=odst, proto=50) / Raw(esp(spi, 7, 80))
        for _ in range(depth):
            p = IP(src="203.0.113.%d" % rng.randrange(1, 250), dst=odst) / p
        out.append(p)
        out.append(IP(raw(p)[: rng.randrange(20, len(raw(p)))]))
    out.append(IPv6(src=o6src, dst=o6dst, nh=4) / IP(src=osrc, dst=odst, proto=51) / Raw(bytes([6, 40]) + rand_bytes(30)))
    # Cleartext TCP aimed at the protected flow, both ways, every flag
    # combination, broken options and data offsets.
    for i in range(64):
        peer = 40000 if i % 4 < 2 else rng.randrange(1024, 65536)  # the flow's own port, or any
        sport, dport = (5001, peer) if i % 2 else (peer, 5001)
        src, dst = (idst, isrc) if i % 2 else (isrc, idst)
        t = TCP(sport=sport, dport=dport, flags=i & 0x3f, seq=rng.getrandbits(32), ack=rng.getrandbits(32), window=rng.getrandbits(16))
        out.append(IP(src=src, dst=dst) / t / Raw(rand_bytes(rng.choice([0, 1, 100]))))
    for opts in (b"\x02\x00", b"\x02\x01", b"\x02\x28" + b"\x00" * 38, b"\x05\x0a" + b"\x00" * 8, b"\x05\x02", b"\x03\x03\xff\x01",
                 b"\x08\x0a" + b"\x00" * 7, b"\x04\x02\x05\x22" + b"\x00" * 30, b"\x01" * 40):
        t = raw(TCP(sport=40000, dport=5001, flags="A", options=[]))
        hdr = bytearray(t)
        body = opts + b"\x00" * ((4 - len(opts) % 4) % 4)
        hdr[12] = ((20 + len(body)) // 4) << 4
        out.append(IP(src=isrc, dst=idst, proto=6) / Raw(bytes(hdr) + body))
    for doff in (0, 1, 4, 15):
        hdr = bytearray(raw(TCP(sport=40000, dport=5001, flags="PA")))
        hdr[12] = doff << 4
        out.append(IP(src=isrc, dst=idst, proto=6) / Raw(bytes(hdr) + rand_bytes(8)))
    # Noise.
    for _ in range(40):
        out.append(IP(src=osrc, dst=odst, proto=rng.choice([4, 41, 50, 51, 17, 6])) / Raw(rand_bytes(rng.randrange(0, 200))))
    return out


sent = 0
for r in range(rounds):
    fs = frames()
    rng.shuffle(fs)
    sendp([Ether(dst=dmac) / f for f in fs], iface=iface, inter=0.0002)
    sent += len(fs)
print("hostile.py sent %d frames" % sent)
