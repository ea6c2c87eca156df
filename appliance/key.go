package appliance

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// KeyFile is the name of the private key file inside the state directory.
const KeyFile = "private.key"

// LoadOrCreateKey returns the appliance's private key, generating it on first
// use. The key lives in stateDir/private.key with mode 0600; the directory is
// created 0700 if missing. A key file readable by group or others is refused
// rather than silently used.
func LoadOrCreateKey(stateDir string) (wgkey.PrivateKey, error) {
	path := filepath.Join(stateDir, KeyFile)
	k, err := readKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return wgkey.PrivateKey{}, fmt.Errorf("creating state directory: %w", err)
	}
	k, err = wgkey.NewPrivate()
	if err != nil {
		return wgkey.PrivateKey{}, err
	}
	text, _ := k.MarshalText()
	// Write to a temporary file and link it into place, so that two
	// appliances racing on one state directory end up with one key.
	tmp, err := os.CreateTemp(stateDir, ".private.key-*")
	if err != nil {
		return wgkey.PrivateKey{}, fmt.Errorf("writing private key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return wgkey.PrivateKey{}, fmt.Errorf("writing private key: %w", err)
	}
	if _, err := tmp.Write(append(text, '\n')); err != nil {
		tmp.Close()
		return wgkey.PrivateKey{}, fmt.Errorf("writing private key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return wgkey.PrivateKey{}, fmt.Errorf("writing private key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return wgkey.PrivateKey{}, fmt.Errorf("writing private key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readKey(path)
		}
		return wgkey.PrivateKey{}, fmt.Errorf("writing private key: %w", err)
	}
	return k, nil
}

func readKey(path string) (wgkey.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return wgkey.PrivateKey{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return wgkey.PrivateKey{}, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return wgkey.PrivateKey{}, fmt.Errorf("private key %s has mode %v; want 0600 (chmod 600 it)", path, st.Mode().Perm())
	}
	buf := make([]byte, 128)
	n, _ := f.Read(buf)
	var k wgkey.PrivateKey
	if err := k.UnmarshalText([]byte(strings.TrimSpace(string(buf[:n])))); err != nil {
		return wgkey.PrivateKey{}, fmt.Errorf("private key %s: %w", path, err)
	}
	if k.IsZero() {
		return wgkey.PrivateKey{}, fmt.Errorf("private key %s is all zeros", path)
	}
	return k, nil
}
