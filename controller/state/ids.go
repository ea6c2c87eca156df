package state

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"regexp"
	"strings"
)

// Id prefixes. A name never contains '_', so a reference is an id exactly
// when it carries its prefix.
const (
	prefixTenant     = "tn_"
	prefixSite       = "st_"
	prefixAppliance  = "ap_"
	prefixEnrollment = "et_"
	prefixAPIToken   = "at_"
)

// Secret prefixes, so that a leaked secret says what it is.
const (
	SecretAPIToken   = "cwa_"
	SecretEnrollment = "cwe_"
	SecretDevice     = "cwd_"
)

func newID(prefix string) string {
	var b [8]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// newSecret returns a fresh secret and the hash that is stored in its place.
func newSecret(prefix string) (secret, hash string) {
	var b [32]byte
	rand.Read(b[:])
	secret = prefix + base64.RawURLEncoding.EncodeToString(b[:])
	return secret, hashSecret(secret)
}

// hashSecret is the stored form of a secret: SHA-256, hex. Secrets carry
// 256 random bits, so a plain hash is enough (no salt or stretching needed)
// and lets the store look them up by hash.
func hashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// validName reports whether s is a valid name for a tenant, site or
// appliance: 1-63 lower-case letters, digits and inner '-'.
func validName(s string) bool { return nameRE.MatchString(s) }

func isID(ref, prefix string) bool { return strings.HasPrefix(ref, prefix) }

const nameRule = "want 1-63 lower-case letters, digits and '-' (not at either end), got %q"
