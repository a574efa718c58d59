#!/usr/bin/python3
"""Convert sa.json (one JSON object per SA, as shared/interop/charonlog2espsa.py
writes) to espep's native SA format on stdout. strongSwan 5.9.8's libipsec
does tunnel mode in UDP 4500 only, which is what these captures hold."""
import json
import sys

ENC = {'AES_GCM_16': 'aes-gcm16', 'AES_GCM_12': 'aes-gcm12', 'AES_CBC': 'aes-cbc',
       'AES_CTR': 'aes-ctr', 'CHACHA20_POLY1305': 'chacha20-poly1305', 'NULL': 'null'}
INTEG = {'NONE': 'none', 'HMAC_SHA1_96': 'hmac-sha1-96', 'HMAC_SHA2_256_128': 'hmac-sha256-128',
         'HMAC_SHA2_384_192': 'hmac-sha384-192', 'HMAC_SHA2_512_256': 'hmac-sha512-256'}

print('espep-sa 1')
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    d = json.loads(line)
    enc = next(v for k, v in ENC.items() if d['enc'].startswith(k))
    print('\n[sa]\nspi = %s\nproto = esp\nsrc = %s\ndst = %s\nmode = tunnel' % (d['spi'], d['src'], d['dst']))
    print('encap = udp 4500 4500\nenc = %s\nenc-key = 0x%s\ninteg = %s' % (enc, d['enc_key'], INTEG[d['integ']]))
    if d['integ_key']:
        print('integ-key = 0x%s' % d['integ_key'])
    print('esn = %s\nclass = write' % ('yes' if 'ESN' in d['proposal'] and 'NO_EXT_SEQ' not in d['proposal'] else 'no'))
