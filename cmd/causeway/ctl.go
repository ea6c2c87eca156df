package main

import "context"

// runCtl is a placeholder until its subcommand lands.
func runCtl(ctx context.Context, args []string) error {
	return usagef("not built yet")
}
