package detect_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/sidewatch/sidewatch/node-agent/detect"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

func decodeForAllocs(t *testing.T, data []byte) (*detect.Engine, []detect.Observation) {
	t.Helper()
	r := trace.NewReader(bytes.NewReader(data))
	var md trace.Metadata
	var st trace.StreamTable
	var eng *detect.Engine
	var ids []detect.StreamID
	var obs []detect.Observation
	for {
		k, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if k == trace.KindMeta {
			key, val := r.Meta()
			if err := md.Apply(key, val); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if eng == nil {
			cfg := benchConfig()
			cfg.ApplyTraceMetadata(md)
			if eng, err = detect.New(cfg); err != nil {
				t.Fatal(err)
			}
		}
		row := r.Row()
		id, isNew, err := st.Intern(row, r.Line())
		if err != nil {
			t.Fatal(err)
		}
		if isNew {
			k := st.Key(id)
			ids = append(ids, eng.Stream(detect.StreamKey{Node: k.Node, VMI: detect.VMIRef{Namespace: k.Namespace, Name: k.VMI}, VCPU: k.VCPU}))
		}
		obs = append(obs, detect.Observation{TimeNS: row.TimeNS, Stream: ids[id], Event: row.Event, Value: row.Value})
	}
	return eng, obs
}
