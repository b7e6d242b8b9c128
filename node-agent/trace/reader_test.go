package trace

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

const goodTrace = `# sidewatch-trace: v1
# interval: 100ms
# sample_period.llc_misses: 10000
# just a comment
time_ns,node,namespace,vmi,vcpu,event,value
100000000,n1,default,vm-a,0,llc_misses,12345
100000000,n1,default,vm-a,1,instructions,99
# guest_region: default/vm-a 0x1000-0x2000 /usr/lib/libcrypto.so.3 BN_mod_exp_mont

100500000,n1,default,vm-a,0,sample.llc_misses,0x7f00dead
100600000,n1,default,vm-b,0,sample.bus_locks,0
`

func TestReaderGood(t *testing.T) {
	r := NewReader(strings.NewReader(goodTrace))
	var md Metadata
	var rows []string
	var metas []string
	for {
		k, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		switch k {
		case KindMeta:
			key, val := r.Meta()
			metas = append(metas, string(key)+"="+string(val))
			if err := md.Apply(key, val); err != nil {
				t.Fatalf("Apply: %v", err)
			}
		case KindRow:
			row := r.Row()
			rows = append(rows, string(row.VMI)+"/"+row.Event.String())
		}
	}
	wantRows := []string{"vm-a/llc_misses", "vm-a/instructions", "vm-a/sample.llc_misses", "vm-b/sample.bus_locks"}
	if strings.Join(rows, " ") != strings.Join(wantRows, " ") {
		t.Errorf("rows: got %v, want %v", rows, wantRows)
	}
	if len(metas) != 3 || !strings.HasPrefix(metas[2], "guest_region=default/vm-a") {
		t.Errorf("metadata: got %v", metas)
	}
	if md.Interval.Milliseconds() != 100 || md.SamplePeriod[LLCMisses] != 10000 {
		t.Errorf("metadata: got %+v", md)
	}
}

func TestReaderRowValues(t *testing.T) {
	r := NewReader(strings.NewReader("# sidewatch-trace: v1\r\n" + Header + "\r\n42,n,ns,v,3,sample.cycles,0xFFffFFffFFffFFff\r\n7,n,ns,v,3,cycles,18446744073709551615"))
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	row := r.Row()
	if row.TimeNS != 42 || row.VCPU != 3 || row.Event != Cycles.Sample() || row.Value != 1<<64-1 {
		t.Errorf("got %+v", *row)
	}
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if row.Value != 1<<64-1 || row.Event != Cycles {
		t.Errorf("got %+v", *row)
	}
}

func TestReaderErrors(t *testing.T) {
	pre := "# sidewatch-trace: v1\n" + Header + "\n"
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", "line 1: empty trace"},
		{"no magic", Header + "\n", "line 1: the first line must be"},
		{"wrong version", "# sidewatch-trace: v2\n", `line 1: unsupported trace version "v2"`},
		{"no header", "# sidewatch-trace: v1\n# a: b\n", "line 3: no header line"},
		{"row before header", "# sidewatch-trace: v1\n1,n,ns,v,0,cycles,1\n", "line 2: expected the header line"},
		{"few fields", pre + "1,n,ns,v,0,cycles\n", "line 3: 6 fields, want 7"},
		{"many fields", pre + "1,n,ns,v,0,cycles,1,2\n", "line 3: too many fields"},
		{"bad time", pre + "-1,n,ns,v,0,cycles,1\n", `line 3: time_ns "-1"`},
		{"time overflow", pre + "9223372036854775808,n,ns,v,0,cycles,1\n", "line 3: time_ns"},
		{"empty node", pre + "1,,ns,v,0,cycles,1\n", "line 3: node is empty"},
		{"quoted", pre + "1,n,\"ns\",v,0,cycles,1\n", "line 3: namespace"},
		{"bad vcpu", pre + "1,n,ns,v,70000,cycles,1\n", "line 3: vcpu"},
		{"bad event", pre + "1,n,ns,v,0,cache_misses,1\n", `line 3: unknown event "cache_misses"`},
		{"hex counter", pre + "1,n,ns,v,0,cycles,0x10\n", "line 3: value \"0x10\" of a counter row"},
		{"negative counter", pre + "1,n,ns,v,0,cycles,-3\n", "line 3: value"},
		{"decimal sample", pre + "1,n,ns,v,0,sample.cycles,1234\n", "line 3: value \"1234\" of a sample row"},
		{"long hex", pre + "1,n,ns,v,0,sample.cycles,0x12345678901234567\n", "line 3: value"},
		{"second line bad", pre + "1,n,ns,v,0,cycles,1\n2,n,ns,v,0,cycles,x\n", "line 4: value"},
		{"long line", pre + strings.Repeat("x", MaxLineBytes+5) + "\n", "line 3: line longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(tc.in))
			var err error
			for err == nil {
				_, err = r.Next()
			}
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("got %v, want a SyntaxError", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %q, want it to contain %q", err, tc.want)
			}
			if _, err2 := r.Next(); err2 != err {
				t.Errorf("error not sticky: got %v after %v", err2, err)
			}
		})
	}
}

func TestWriterRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.Meta(MetaInterval, "100ms")
	reg := GuestRegion{Namespace: "ns", VMI: "v", Start: 0x1000, End: 0x2000, Path: "/opt/my lib.so", Symbol: "f%g"}
	w.Meta(MetaGuestRegion, reg.String())
	type rec struct {
		t     int64
		vcpu  int
		e     Event
		value uint64
	}
	in := []rec{{1, 0, LLCMisses, 5}, {2, 1, LLCMisses.Sample(), 0xdead}, {3, 0, BusLocks.Sample(), 0}, {4, 2, Cycles, 1 << 40}}
	for _, r := range in {
		w.Row(r.t, "node", "ns", "v", r.vcpu, r.e, r.value)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&buf)
	var got []rec
	for {
		k, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if k == KindMeta {
			key, val := r.Meta()
			if string(key) == MetaGuestRegion {
				g, err := ParseGuestRegion(string(val))
				if err != nil || g != reg {
					t.Errorf("guest region: got %+v, %v, want %+v", g, err, reg)
				}
			}
			continue
		}
		row := r.Row()
		got = append(got, rec{row.TimeNS, int(row.VCPU), row.Event, row.Value})
	}
	if len(got) != len(in) {
		t.Fatalf("got %d rows, want %d", len(got), len(in))
	}
	for i := range in {
		if got[i] != in[i] {
			t.Errorf("row %d: got %+v, want %+v", i, got[i], in[i])
		}
	}
}

func TestParseGuestRegion(t *testing.T) {
	for _, tc := range []struct {
		in      string
		wantErr bool
	}{
		{"ns/vm 0x1000-0x2000 /usr/lib/libcrypto.so.3 BN_mod_exp_mont", false},
		{"ns/vm 0x1000-0x2000 [kernel]", false},
		{"ns/vm 0x2000-0x1000 /lib", true}, // empty range
		{"vm 0x1000-0x2000 /lib", true},    // no namespace
		{"ns/vm 0x1000 /lib", true},        // no end
		{"ns/vm 1000-2000 /lib", true},     // not hex
		{"ns/vm 0x1-0x2", true},            // no path
		{"ns/vm 0x1-0x2 /a b c", true},     // too many fields
		{"ns/vm 0x1-0x2 /a%2", true},       // bad escape
	} {
		_, err := ParseGuestRegion(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseGuestRegion(%q): got err %v, want error %v", tc.in, err, tc.wantErr)
		}
	}
}

func TestStreamTableOrder(t *testing.T) {
	var st StreamTable
	row := Row{TimeNS: 10, Node: []byte("n"), Namespace: []byte("ns"), VMI: []byte("a"), VCPU: 0}
	id, isNew, err := st.Intern(&row, 1)
	if err != nil || !isNew || id != 0 {
		t.Fatalf("got %d %v %v", id, isNew, err)
	}
	row.VCPU = 1
	row.TimeNS = 5 // another stream may be earlier
	if id, isNew, err = st.Intern(&row, 2); err != nil || !isNew || id != 1 {
		t.Fatalf("got %d %v %v", id, isNew, err)
	}
	row.VCPU = 0
	row.TimeNS = 9
	if _, _, err = st.Intern(&row, 3); err == nil || !strings.Contains(err.Error(), "line 3: time_ns 9 is before time_ns 10") {
		t.Fatalf("got %v, want an order error", err)
	}
	st.Max = 2
	row.VMI = []byte("c")
	if _, _, err = st.Intern(&row, 4); err == nil || !strings.Contains(err.Error(), "more than 2") {
		t.Fatalf("got %v, want a limit error", err)
	}
}

// benchTrace returns a trace of n rows over 8 VMIs.
func benchTrace(n int) []byte {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	vmis := []string{"web-0", "web-1", "db-0", "cache-0", "batch-0", "batch-1", "vid-0", "idle-0"}
	for i := 0; i < n; i++ {
		e := Event(1 + i%NumCounters)
		v := uint64(i * 7919 % 100000)
		if i%3 == 0 {
			e = LLCMisses.Sample()
			v = 0x7f0000000000 + uint64(i)
		}
		w.Row(int64(i)*10000, "node-1", "tenant-a", vmis[i%len(vmis)], i%4, e, v)
	}
	w.Flush()
	return buf.Bytes()
}

func TestReaderAllocs(t *testing.T) {
	data := benchTrace(20000)
	r := NewReader(bytes.NewReader(data))
	var st StreamTable
	// Warm up: every stream is interned once.
	for i := 0; i < 1000; i++ {
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		if _, _, err := st.Intern(r.Row(), r.Line()); err != nil {
			t.Fatal(err)
		}
	}
	allocs := testing.AllocsPerRun(10000, func() {
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		if _, _, err := st.Intern(r.Row(), r.Line()); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("got %v allocations per row, want 0", allocs)
	}
}

var sinkRows int

func BenchmarkReader(b *testing.B) {
	data := benchTrace(200000)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		r := NewReader(bytes.NewReader(data))
		var st StreamTable
		n := 0
		for {
			_, err := r.Next()
			if err != nil {
				break
			}
			st.Intern(r.Row(), r.Line())
			n++
		}
		sinkRows = n
	}
	b.ReportMetric(float64(b.N)*200000/b.Elapsed().Seconds(), "rows/s")
}
