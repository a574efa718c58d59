package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The files of a CA directory. The key never leaves it.
const (
	caCertFile = "ca.crt"
	caKeyFile  = "ca.key"
	caCRLFile  = "ca.crl"
)

// CA is a certificate authority kept in a directory: its certificate
// (ca.crt, for everyone), its key (ca.key, mode 0600) and its revocation
// list (ca.crl, for everyone).
type CA struct {
	Cert *x509.Certificate
	key  crypto.Signer
	dir  string
	crl  *x509.RevocationList
}

// now is the clock certificates are issued by (tests move it).
var now = time.Now

// Init makes a new CA named name in dir (created if missing; an existing
// CA there is an error), valid for validity.
func Init(dir, name string, validity time.Duration) (*CA, error) {
	if _, err := os.Stat(filepath.Join(dir, caKeyFile)); err == nil {
		return nil, fmt.Errorf("pki: %s already holds a CA", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	t := now()
	tmpl := &x509.Certificate{SerialNumber: newSerial(), Subject: pkix.Name{CommonName: name, Organization: []string{"espep"}},
		NotBefore: t.Add(-time.Minute), NotAfter: t.Add(validity), IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	keyPEM, err := keyToPEM(key)
	if err != nil {
		return nil, err
	}
	ca := &CA{Cert: cert, key: key, dir: dir}
	if err := WriteFile(filepath.Join(dir, caKeyFile), keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := WriteFile(filepath.Join(dir, caCertFile), certToPEM(der), 0o644); err != nil {
		return nil, err
	}
	return ca, ca.writeCRL(nil)
}

// Open loads the CA in dir. Its key file must be closed to group and
// others.
func Open(dir string) (*CA, error) {
	cert, err := LoadCert(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, err
	}
	key, err := LoadKey(filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, err
	}
	ca := &CA{Cert: cert, key: key, dir: dir}
	if ca.crl, err = LoadCRL(filepath.Join(dir, caCRLFile), cert); err != nil {
		return nil, err
	}
	return ca, nil
}

// Issue makes a key pair and a certificate for id, valid for validity
// (never beyond the CA's own), and returns both PEM-encoded.
func (ca *CA) Issue(id Identity, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if err := id.Validate(); err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	t := now()
	until := t.Add(validity)
	if until.After(ca.Cert.NotAfter) {
		until = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{SerialNumber: newSerial(), Subject: pkix.Name{CommonName: id.Name, Organization: []string{"espep"}},
		NotBefore: t.Add(-time.Minute), NotAfter: until,
		KeyUsage: x509.KeyUsageDigitalSignature, URIs: id.uris(), DNSNames: id.DNS}
	// Every holder is a TLS client of some server; servers are servers too.
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if id.Role == RoleServer || id.Role == RoleGateway {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	for _, a := range id.Addrs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(a.AsSlice()))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	if keyPEM, err = keyToPEM(key); err != nil {
		return nil, nil, err
	}
	return certToPEM(der), keyPEM, nil
}

// Revoke takes back the certificate with the given serial number: the CA
// signs a new revocation list (ca.crl) with it added.
func (ca *CA) Revoke(serial *big.Int) error {
	var entries []x509.RevocationListEntry
	if ca.crl != nil {
		entries = ca.crl.RevokedCertificateEntries
	}
	for _, e := range entries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return nil
		}
	}
	return ca.writeCRL(append(entries, x509.RevocationListEntry{SerialNumber: serial, RevocationTime: now()}))
}

// crlValidity is how long a revocation list stays current; a CA that
// revokes nothing for that long should sign a new one (espep pki crl).
const crlValidity = 30 * 24 * time.Hour

// writeCRL signs and writes a revocation list of entries, numbered one
// above the last.
func (ca *CA) writeCRL(entries []x509.RevocationListEntry) error {
	number := big.NewInt(1)
	if ca.crl != nil && ca.crl.Number != nil {
		number.Add(ca.crl.Number, number)
	}
	t := now()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: number, ThisUpdate: t,
		NextUpdate: t.Add(crlValidity), RevokedCertificateEntries: entries}, ca.Cert, ca.key)
	if err != nil {
		return fmt.Errorf("pki: revocation list: %w", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return fmt.Errorf("pki: revocation list: %w", err)
	}
	if err := WriteFile(filepath.Join(ca.dir, caCRLFile), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		return err
	}
	ca.crl = crl
	return nil
}

// Renew signs the revocation list again (same entries, new dates).
func (ca *CA) Renew() error {
	var entries []x509.RevocationListEntry
	if ca.crl != nil {
		entries = ca.crl.RevokedCertificateEntries
	}
	return ca.writeCRL(entries)
}

func newSerial() *big.Int {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return s.Add(s, big.NewInt(1))
}

func keyToPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func certToPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// WriteFile writes data to path with mode through a temporary file
// renamed over it, so that a reader never sees half a file and a key never
// sits in a file open to others.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	os.Remove(tmp) // a leftover may be open to others: never write into it
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode&0o600)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, mode) // widen to mode only once written (the umask may also have narrowed it)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// LoadCert reads one PEM certificate.
func LoadCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("pki: %s: no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	return c, nil
}

// LoadKey reads a PEM private key, refusing a file group or others may
// read.
func LoadKey(path string) (crypto.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return nil, fmt.Errorf("pki: key file %s has mode %#o: it must be closed to group and others (chmod go-rwx)", path, m)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("pki: %s: no PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("pki: %s: not a signing key", path)
	}
	return s, nil
}

// LoadCRL reads a PEM revocation list and checks that issuer signed it.
// A missing file is an empty list.
func LoadCRL(path string, issuer *x509.Certificate) (*x509.RevocationList, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "X509 CRL" {
		return nil, fmt.Errorf("pki: %s: no PEM revocation list", path)
	}
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		return nil, fmt.Errorf("pki: %s: not signed by the CA: %w", path, err)
	}
	return crl, nil
}
