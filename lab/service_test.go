package lab

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestServiceHandler(t *testing.T) {
	srv := httptest.NewServer(ServiceHandler("vpc-1-backend-1"))
	defer srv.Close()
	get := func(path string) (int, []byte) {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	code, body := get("/")
	if code != 200 || !strings.Contains(string(body), "vpc-1-backend-1") || !strings.Contains(string(body), "127.0.0.1") {
		t.Errorf("GET / = %d %q", code, body)
	}
	code, body = get("/bytes?n=100000")
	if code != 200 || len(body) != 100000 {
		t.Fatalf("GET /bytes?n=100000 = %d, %d bytes", code, len(body))
	}
	if err := checkPattern(body); err != nil {
		t.Error(err)
	}
	if code, _ := get("/bytes?n=0"); code != 200 {
		t.Errorf("n=0: %d", code)
	}
	for _, q := range []string{"n=-1", "n=x", "", "n=2000000000"} {
		if code, _ := get("/bytes?" + q); code != http.StatusBadRequest {
			t.Errorf("/bytes?%s = %d, want 400", q, code)
		}
	}
	if code, _ := get("/nosuch"); code != http.StatusNotFound {
		t.Errorf("/nosuch = %d", code)
	}
	if code, body := get("/healthz"); code != 200 || string(body) != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
}

// checkPattern reports whether b is the start of patternReader's stream.
func checkPattern(b []byte) error {
	for i, c := range b {
		if c != byte(i) {
			return fmt.Errorf("byte %d is %d, want %d", i, c, byte(i))
		}
	}
	return nil
}
