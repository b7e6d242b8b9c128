package trace

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzReader feeds arbitrary bytes to the reader: it must never panic,
// every error must be a located SyntaxError, and whatever it accepts must
// survive a write/read round trip unchanged.
func FuzzReader(f *testing.F) {
	f.Add([]byte(goodTrace))
	f.Add([]byte("# sidewatch-trace: v1\n" + Header + "\n1,n,ns,v,0,sample.llc_misses,0x10\n2,n,ns,v,0,bus_locks,3"))
	f.Add([]byte("# sidewatch-trace: v1\n# guest_region: a/b 0x1-0x2 /x y\n" + Header + "\n"))
	f.Add([]byte("\xef\xbb\xbf# sidewatch-trace: v1\r\n" + Header + "\r\n1,n,ns,v,0,cycles,1\r\n"))
	f.Add(benchTrace(20))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data))
		var out bytes.Buffer
		w := NewWriter(&out)
		var st StreamTable
		var md Metadata
		rows := 0
		for {
			k, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				var se *SyntaxError
				if !errors.As(err, &se) || se.Line < 1 {
					t.Fatalf("error %v is not a located SyntaxError", err)
				}
				return
			}
			if k == KindMeta {
				key, val := r.Meta()
				_ = md.Apply(key, val)
				if string(key) == MetaGuestRegion {
					if g, err := ParseGuestRegion(string(val)); err == nil {
						if g2, err := ParseGuestRegion(g.String()); err != nil || g2 != g {
							t.Fatalf("guest region round trip: %+v -> %q -> %+v, %v", g, g.String(), g2, err)
						}
					}
				}
				continue
			}
			row := r.Row()
			if _, _, err := st.Intern(row, r.Line()); err != nil {
				return
			}
			w.Row(row.TimeNS, string(row.Node), string(row.Namespace), string(row.VMI), int(row.VCPU), row.Event, row.Value)
			rows++
		}
		w.Header()
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		r2 := NewReader(&out)
		n := 0
		for {
			k, err := r2.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("re-reading written trace: %v", err)
			}
			if k == KindRow {
				n++
			}
		}
		if n != rows {
			t.Fatalf("round trip: %d rows read back, %d written", n, rows)
		}
	})
}
