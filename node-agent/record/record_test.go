package record_test

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/record"
)

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w, err := record.NewWriter(&buf, "n1", []record.Meta{{Key: "cpu", Value: "GenuineIntel family 6 model 143"}, {Key: "sample_period.llc_misses", Value: "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	s := collect.StreamID{Namespace: "prod", VMI: "db", VCPU: 1}
	events := []string{"llc_misses", "task_clock", "cycles"}
	w.Sample(&collect.Sample{Stream: s, Time: 90, Event: "llc_misses", IP: 0x7f00deadbeef, Mode: collect.ModeGuestUser})
	w.Sample(&collect.Sample{Stream: s, Time: 95, Event: "llc_misses", IP: 0x555500001000, Mode: collect.ModeHostUser})
	w.Reading(&collect.Reading{Stream: s, Time: 100, Events: events, Values: [collect.MaxEvents]uint64{42, 7, 1000}, Valid: 0b101})
	w.Reading(&collect.Reading{Stream: s, Time: 200, Events: events, Values: [collect.MaxEvents]uint64{43}, Valid: 0b001})
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	want := `# sidewatch-trace: v1
# cpu: GenuineIntel family 6 model 143
# sample_period.llc_misses: 1000
time_ns,node,namespace,vmi,vcpu,event,value
90,n1,prod,db,1,sample.llc_misses,0x7f00deadbeef
95,n1,prod,db,1,sample.llc_misses,0
100,n1,prod,db,1,llc_misses,42
100,n1,prod,db,1,cycles,1000
200,n1,prod,db,1,llc_misses,43
`
	if buf.String() != want {
		t.Fatalf("wrote:\n%s\nwant:\n%s", buf.String(), want)
	}
	r, err := record.NewReader(strings.NewReader(buf.String()))
	if err != nil {
		t.Fatal(err)
	}
	if m := r.Meta(); len(m) != 2 || m[1].Key != "sample_period.llc_misses" || m[1].Value != "1000" {
		t.Errorf("meta %+v", m)
	}
	var rows []record.Row
	for {
		row, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, row)
	}
	if len(rows) != 5 {
		t.Fatalf("%d rows", len(rows))
	}
	if r0 := rows[0]; !r0.Sample || r0.Event != "llc_misses" || r0.Value != 0x7f00deadbeef || r0.Line != 5 || r0.VCPU != 1 {
		t.Errorf("row 0 %+v", r0)
	}
	if r3 := rows[3]; r3.Sample || r3.Event != "cycles" || r3.Value != 1000 || r3.TimeNS != 100 {
		t.Errorf("row 3 %+v", r3)
	}
}

func TestRenameStandIns(t *testing.T) {
	var buf bytes.Buffer
	w, _ := record.NewWriter(&buf, "n1", nil)
	w.Rename("task_clock", "cycles")
	w.Reading(&collect.Reading{Stream: collect.StreamID{Namespace: "a", VMI: "b"}, Time: 1, Events: []string{"task_clock", "page_faults"}, Values: [collect.MaxEvents]uint64{5, 6}, Valid: 3})
	_ = w.Flush()
	if !strings.HasSuffix(buf.String(), "\n1,n1,a,b,0,cycles,5\n") || strings.Contains(buf.String(), "page_faults") {
		t.Errorf("wrote %q", buf.String())
	}
}

// The format's reader (node-agent/trace) owns the parsing and its fuzzing;
// the adapter must pass its located errors through and add the per-vCPU
// time-order check.
func TestReaderErrors(t *testing.T) {
	const head = "# sidewatch-trace: v1\ntime_ns,node,namespace,vmi,vcpu,event,value\n"
	tests := []struct {
		name, in, want string
	}{
		{"not a trace", "time_ns,node\n", "line 1: "},
		{"bad header", "# sidewatch-trace: v1\ntime,node\n", "line 2: "},
		{"few fields", head + "1,n,ns,v,0,llc_misses\n", "line 3: "},
		{"unknown event", head + "1,n,ns,v,0,task_clock,1\n", "line 3: "},
		{"decimal sample", head + "1,n,ns,v,0,sample.llc_misses,1234\n", "line 3: "},
		{"back in time", head + "5,n,ns,v,0,llc_misses,1\n4,n,ns,v,0,llc_misses,1\n", "line 4: "},
		{"late error after good rows", head + "5,n,ns,v,0,llc_misses,1\n6,n,ns,v,0,llc_misses,x\n", "line 4: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := record.NewReader(strings.NewReader(tt.in))
			for err == nil {
				_, err = r.Next()
			}
			if err == io.EOF || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to start with %q", err, tt.want)
			}
		})
	}
	// Other vCPUs may interleave at earlier times.
	r, _ := record.NewReader(strings.NewReader(head + "5,n,ns,v,0,llc_misses,1\n4,n,ns,v,1,llc_misses,1\n"))
	for i := 0; i < 2; i++ {
		if _, err := r.Next(); err != nil {
			t.Fatalf("interleaved vcpus: %v", err)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}
