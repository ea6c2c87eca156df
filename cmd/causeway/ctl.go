package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/causeway-net/causeway/controller/ctl"
)

// runCtl drives the controller API.
func runCtl(ctx context.Context, args []string) error {
	fs := newFlagSet("ctl", "ctl [flags] <noun> <verb> [arguments]\n\n"+ctl.Usage)
	server := fs.String("server", envDefault("CAUSEWAY_SERVER", "https://127.0.0.1:8443"), "controller base URL (CAUSEWAY_SERVER)")
	token := fs.String("token", envDefault("CAUSEWAY_TOKEN", ""), "API token (CAUSEWAY_TOKEN); prefer --token-file")
	tokenFile := fs.String("token-file", envDefault("CAUSEWAY_TOKEN_FILE", ""), "file holding the API token (CAUSEWAY_TOKEN_FILE)")
	ca := fs.String("ca", envDefault("CAUSEWAY_CA", ""), "CA certificate to trust for the controller, e.g. its ca.crt (CAUSEWAY_CA)")
	asJSON := fs.Bool("json", false, "print lists as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	tok := *token
	if tok == "" && *tokenFile != "" {
		data, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("reading the token: %w", err)
		}
		tok = strings.TrimSpace(string(data))
	}
	err := ctl.Run(ctx, ctl.Config{Server: *server, Token: tok, CAFile: *ca, JSON: *asJSON, Out: os.Stdout}, fs.Args())
	if ctl.IsUsage(err) {
		return usagef("%v", err)
	}
	return err
}
