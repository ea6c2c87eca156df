package api

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// TestOpenAPI checks that the served document is the one in docs/api and
// that it documents exactly the routes the server has.
func TestOpenAPI(t *testing.T) {
	docs, err := os.ReadFile("../../docs/api/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(docs, OpenAPI) {
		t.Fatal("docs/api/openapi.json and controller/api/openapi.json differ; copy one over the other")
	}
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	for _, rt := range (&API{}).routes() {
		if !documented[rt.pattern] {
			t.Errorf("route %s is not in openapi.json", rt.pattern)
		}
		delete(documented, rt.pattern)
	}
	for op := range documented {
		t.Errorf("openapi.json documents %s, which the server does not have", op)
	}
}
