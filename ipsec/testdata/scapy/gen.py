#!/usr/bin/python3
"""Independent ESP/AH test vectors made with scapy (Debian 12: python3-scapy
2.5.0), for espep's ipsec package. Run with Debian's /usr/bin/python3:

    gen.py vectors OUTDIR     write OUTDIR/vectors.json (and vectors.pcap)
    gen.py check FILE.json    decrypt packets that espep sealed (same JSON
                              schema, 'wire' made by espep) and compare each
                              with its 'plain'; exit 1 on any mismatch
    gen.py decrypt-pcap PCAP SAS.json
                              open every ESP/AH packet of a capture (e.g. of
                              espep host) with the SAs in SAS.json (a list of
                              {spi, proto, enc, enc_key, integ, integ_key,
                              mode, encap, outer6} with espep's transform
                              names); exit 1 unless every one opens

Each vector: every transform × transport/tunnel × raw ESP/UDP 4500 ×
IPv4/IPv6 (and mixed-family tunnels), AH transport and tunnel, and ESN for
the transforms scapy handles it in (AEAD AAD and AH). scapy 2.5.0 leaves the
ESN high bits out of ESP HMAC ICVs (RFC 4303 §2.2.1 puts them in), so ESP
with HMAC and ESN is not generated here. scapy 2.5.0 also leaves the UDP
header in when it decrypts IPv6 transport-mode ESP-in-UDP; scapy_decrypt
strips it first and decrypts the raw ESP (the bytes are the same). And
with python3-cryptography's AEAD API scapy 2.5.0 ignores crypt_icv_size and
always sends a 16-octet GCM tag, so AES-GCM with a 12-octet ICV is checked
with tshark instead (ipsec/tshark_test.go).

Keys, SPIs, IVs and payloads are deterministic so the file is reproducible.
"""
import json
import os
import sys

from scapy.all import IP, IPv6, TCP, UDP, Ether, Raw, raw, rdpcap, wrpcap
from scapy.layers.ipsec import AH, ESP, SecurityAssociation

V4 = ('10.77.1.1', '10.77.2.1')
V6 = ('fd00:77:1::1', 'fd00:77:2::1')
IN4 = ('10.78.1.1', '10.78.2.1')
IN6 = ('fd00:78:1::1', 'fd00:78:2::1')

# name: (proto, scapy crypt, enc key len incl. salt, crypt icv, scapy auth,
#        auth key len, espep enc, espep integ, iv len)
SUITES = {
    'aes128gcm16':      ('esp', 'AES-GCM', 20, 16, None, 0, 'aes-gcm16', 'none', 8),
    'aes256gcm16':      ('esp', 'AES-GCM', 36, 16, None, 0, 'aes-gcm16', 'none', 8),
    'chacha20poly1305': ('esp', 'CHACHA20-POLY1305', 36, 16, None, 0, 'chacha20-poly1305', 'none', 8),
    'aes128-sha256':    ('esp', 'AES-CBC', 16, None, 'SHA2-256-128', 32, 'aes-cbc', 'hmac-sha256-128', 16),
    'aes256-sha256':    ('esp', 'AES-CBC', 32, None, 'SHA2-256-128', 32, 'aes-cbc', 'hmac-sha256-128', 16),
    'aes128-sha1':      ('esp', 'AES-CBC', 16, None, 'HMAC-SHA1-96', 20, 'aes-cbc', 'hmac-sha1-96', 16),
    'aes256-sha512':    ('esp', 'AES-CBC', 32, None, 'SHA2-512-256', 64, 'aes-cbc', 'hmac-sha512-256', 16),
    'aes128ctr-sha256': ('esp', 'AES-CTR', 20, None, 'SHA2-256-128', 32, 'aes-ctr', 'hmac-sha256-128', 8),
    'aes256ctr-sha384': ('esp', 'AES-CTR', 36, None, 'SHA2-384-192', 48, 'aes-ctr', 'hmac-sha384-192', 8),
    'null-sha256':      ('esp', 'NULL', 0, None, 'SHA2-256-128', 32, 'null', 'hmac-sha256-128', 0),
    'ah-sha256':        ('ah', None, 0, None, 'SHA2-256-128', 32, 'none', 'hmac-sha256-128', 0),
    'ah-sha1':          ('ah', None, 0, None, 'HMAC-SHA1-96', 20, 'none', 'hmac-sha1-96', 0),
    'ah-sha512':        ('ah', None, 0, None, 'SHA2-512-256', 64, 'none', 'hmac-sha512-256', 0),
}


def det_bytes(n, seed):
    return bytes((seed * 17 + i * 7) & 0xff for i in range(n))


def make_sa(v):
    s = SUITES[v['suite']]
    outer = V6 if v['outer6'] else V4
    kw = dict(spi=int(v['spi'], 16))
    if s[0] == 'esp':
        kw.update(crypt_algo=s[1], crypt_key=bytes.fromhex(v['enc_key']))
        if s[3]:
            kw['crypt_icv_size'] = s[3]
    if s[4]:
        kw.update(auth_algo=s[4], auth_key=bytes.fromhex(v['integ_key']))
    if v['mode'] == 'tunnel':
        kw['tunnel_header'] = (IPv6 if v['outer6'] else IP)(src=outer[0], dst=outer[1])
    if v['encap'] == 'udp-4500':
        kw['nat_t_header'] = UDP(sport=4500, dport=4500)
    if v['esn']:
        kw.update(esn_en=True, esn=v['seq'] >> 32)
    return SecurityAssociation(ESP if s[0] == 'esp' else AH, **kw)


def plain_packet(v, i):
    if v['mode'] == 'tunnel':
        a = IN6 if v['inner6'] else IN4
    else:
        a = V6 if v['outer6'] else V4
    ip = IPv6(src=a[0], dst=a[1], hlim=64) if ':' in a[0] else IP(src=a[0], dst=a[1], id=1, ttl=64)
    pay = b'PEP vector %d %s' % (i, v['name'].encode()) + det_bytes(i * 37 % 300, i)
    return (ip / TCP(sport=40000, dport=5001, seq=1000, ack=2000, flags='PA', window=65535) / Raw(pay))


def fix_udp(pkt):
    """scapy 2.5.0 freezes the NAT-T UDP length at 8 before adding ESP."""
    if pkt.haslayer(UDP) and pkt.haslayer(ESP):
        pkt[UDP].len = 8 + len(raw(pkt[ESP]))
        pkt[UDP].chksum = 0 if pkt.haslayer(IP) and not pkt.haslayer(IPv6) else None
    return pkt


def scapy_decrypt(v, wire):
    """scapy's decryption of wire, working around its IPv6 transport NAT-T bug."""
    if v['outer6'] and v['mode'] == 'transport' and v['encap'] == 'udp-4500':
        p = IPv6(wire)
        esp = raw(p[UDP].payload)
        ip = p.copy()
        ip.remove_payload()
        ip.nh, ip.plen = 50, None
        wire = raw(ip / Raw(esp))
        v = dict(v, encap='none')
    pkt = (IPv6 if wire[0] >> 4 == 6 else IP)(wire)
    return raw(make_sa(v).decrypt(pkt))


def vectors(outdir):
    os.makedirs(outdir, exist_ok=True)
    out, frames, spi, i = [], [], 0xc0de0100, 0
    for suite, s in SUITES.items():
        for mode in ('transport', 'tunnel'):
            for encap in (('none',) if s[0] == 'ah' else ('none', 'udp-4500')):
                for outer6 in (False, True):
                    inners = (outer6,) if mode == 'transport' else (False, True)
                    for inner6 in inners:
                        esns = (False, True) if (s[1] in ('AES-GCM', 'CHACHA20-POLY1305') or s[0] == 'ah') else (False,)
                        for esn in esns:
                            i += 1
                            spi += 1
                            v = dict(name='%s/%s/%s/%s-in-%s%s' % (suite, mode, encap, 'v6' if inner6 else 'v4',
                                                                  'v6' if outer6 else 'v4', '/esn' if esn else ''),
                                     suite=suite, proto=s[0], spi='0x%08x' % spi, mode=mode, encap=encap,
                                     outer6=outer6, inner6=inner6, esn=esn,
                                     seq=((3 << 32) | 0x1234) if esn else 0x1234,
                                     enc=s[6], enc_key=det_bytes(s[2], spi & 0xff).hex(),
                                     integ=s[7], integ_key=det_bytes(s[5], (spi + 100) & 0xff).hex(),
                                     iv=bytes(range(1, s[8] + 1)).hex())
                            plain = plain_packet(v, i)
                            plain = (IPv6 if inner6 or (mode == 'transport' and outer6) else IP)(raw(plain))
                            sa = make_sa(v)
                            seq32 = v['seq'] & 0xffffffff
                            if s[0] == 'esp':
                                enc = sa.encrypt(plain, seq_num=seq32, iv=bytes.fromhex(v['iv']) or None)
                            else:
                                enc = sa.encrypt(plain, seq_num=seq32)
                            enc = fix_udp(enc)
                            wire = (IPv6 if outer6 else IP)(raw(enc))
                            if scapy_decrypt(v, raw(wire)) != raw(plain):
                                print('scapy does not round-trip %s' % v['name'], file=sys.stderr)
                                return False
                            v['plain'] = raw(plain).hex()
                            v['wire'] = raw(wire).hex()
                            out.append(v)
                            frames.append(Ether(src='02:00:00:00:00:01', dst='02:00:00:00:00:02') / wire)
    with open(os.path.join(outdir, 'vectors.json'), 'w') as f:
        json.dump(out, f, indent=0)
        f.write('\n')
    wrpcap(os.path.join(outdir, 'vectors.pcap'), frames)
    print('wrote %d vectors to %s' % (len(out), outdir))
    return True


def check(path):
    """Decrypt espep's 'wire' with scapy; compare with 'plain'."""
    vs = json.load(open(path))
    bad = 0
    for v in vs:
        try:
            got = scapy_decrypt(v, bytes.fromhex(v['wire']))
        except Exception as e:  # ICV failure and friends
            print('FAIL %s: %s' % (v['name'], e))
            bad += 1
            continue
        if got != bytes.fromhex(v['plain']):
            print('FAIL %s: plaintext differs\n got  %s\n want %s' % (v['name'], got.hex(), v['plain']))
            bad += 1
    print('scapy opened %d of %d espep packets' % (len(vs) - bad, len(vs)))
    return bad == 0


ENC_BY_ESPEP = {'aes-gcm16': ('AES-GCM', 16), 'aes-gcm12': ('AES-GCM', 12),
                'chacha20-poly1305': ('CHACHA20-POLY1305', 16), 'aes-cbc': ('AES-CBC', None),
                'aes-ctr': ('AES-CTR', None), 'null': ('NULL', None)}
INTEG_BY_ESPEP = {'none': None, 'hmac-sha1-96': 'HMAC-SHA1-96', 'hmac-sha256-128': 'SHA2-256-128',
                  'hmac-sha384-192': 'SHA2-384-192', 'hmac-sha512-256': 'SHA2-512-256'}


def sa_from_espep(d):
    kw = dict(spi=int(d['spi'], 16))
    if d['proto'] == 'esp':
        crypt, icv = ENC_BY_ESPEP[d['enc']]
        kw.update(crypt_algo=crypt, crypt_key=bytes.fromhex(d['enc_key']))
        if icv:
            kw['crypt_icv_size'] = icv
    auth = INTEG_BY_ESPEP[d['integ']]
    if auth:
        kw.update(auth_algo=auth, auth_key=bytes.fromhex(d['integ_key']))
    if d['mode'] == 'tunnel':
        kw['tunnel_header'] = IPv6() if d['outer6'] else IP()
    if d['encap'] == 'udp-4500':
        kw['nat_t_header'] = UDP(sport=4500, dport=4500)
    return SecurityAssociation(ESP if d['proto'] == 'esp' else AH, **kw)


def decrypt_capture(pcap, sajson):
    sas = {int(d['spi'], 16): d for d in json.load(open(sajson))}
    n = ok = 0
    for i, frame in enumerate(rdpcap(pcap), 1):
        ip = frame[IPv6] if frame.haslayer(IPv6) else (frame[IP] if frame.haslayer(IP) else None)
        if ip is None:
            continue
        layer = ESP if ip.haslayer(ESP) else (AH if ip.haslayer(AH) else None)
        if layer is None or ip[layer].spi < 256:
            continue
        d = sas.get(ip[layer].spi)
        if d is None:
            continue
        n += 1
        wire = raw(ip)
        if d['outer6'] and d['mode'] == 'transport' and d['encap'] == 'udp-4500':
            p = IPv6(wire)    # scapy's IPv6 transport NAT-T bug, as in scapy_decrypt
            esp = raw(p[UDP].payload)
            hdr = p.copy()
            hdr.remove_payload()
            hdr.nh, hdr.plen = 50, None
            wire, d = raw(hdr / Raw(esp)), dict(d, encap='none')
        try:
            sa_from_espep(d).decrypt((IPv6 if wire[0] >> 4 == 6 else IP)(wire))
            ok += 1
        except Exception as e:
            print('FAIL frame %d spi=0x%08x: %s' % (i, ip[layer].spi, e))
    print('scapy opened %d of %d IPsec packets' % (ok, n))
    return n > 0 and ok == n


if __name__ == '__main__':
    if len(sys.argv) == 4 and sys.argv[1] == 'decrypt-pcap':
        sys.exit(0 if decrypt_capture(sys.argv[2], sys.argv[3]) else 1)
    if len(sys.argv) == 3 and sys.argv[1] == 'vectors':
        sys.exit(0 if vectors(sys.argv[2]) else 1)
    if len(sys.argv) == 3 and sys.argv[1] == 'check':
        sys.exit(0 if check(sys.argv[2]) else 1)
    print(__doc__)
    sys.exit(2)
