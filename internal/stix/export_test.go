package stix

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// The rules below are transcribed from the STIX 2.1 specification (OASIS
// Standard, 10 June 2021): section numbers name where each comes from.

// requiredProperties lists, per object type, the properties the spec marks
// "(required)". Common properties (3.2) apply to every SDO and SRO: type,
// spec_version, id, created, modified; SCOs (6.x, 3.1) require type and id.
var requiredProperties = map[string][]string{
	"attack-pattern":       {"type", "spec_version", "id", "created", "modified", "name"},                                                           // 4.1
	"identity":             {"type", "spec_version", "id", "created", "modified", "name"},                                                           // 4.5
	"infrastructure":       {"type", "spec_version", "id", "created", "modified", "name"},                                                           // 4.8
	"malware":              {"type", "spec_version", "id", "created", "modified", "is_family"},                                                      // 4.11
	"observed-data":        {"type", "spec_version", "id", "created", "modified", "first_observed", "last_observed", "number_observed"},             // 4.14
	"relationship":         {"type", "spec_version", "id", "created", "modified", "relationship_type", "source_ref", "target_ref"},                  // 5.1
	"sighting":             {"type", "spec_version", "id", "created", "modified", "sighting_of_ref"},                                                // 5.2
	"extension-definition": {"type", "spec_version", "id", "created", "modified", "created_by_ref", "name", "schema", "version", "extension_types"}, // 7.3
	"process":              {"type", "id"},                                                                                                          // 6.11
	"file":                 {"type", "id"},                                                                                                          // 6.7
	"directory":            {"type", "id"},                                                                                                          // 6.3
}

// Vocabularies (section 10) the export draws from.
var vocabularies = map[string]map[string]bool{
	// 10.11 identity-class-ov
	"identity_class": set("individual", "group", "system", "organization", "class", "unknown"),
	// 10.12 infrastructure-type-ov
	"infrastructure_types": set("amplification", "anonymization", "botnet", "command-and-control", "control-system", "exfiltration", "firewall", "hosting-malware", "hosting-target-lists", "phishing", "reconnaissance", "routers-switches", "staging", "workstation", "unknown"),
	// 10.16 malware-type-ov
	"malware_types": set("adware", "backdoor", "bot", "bootkit", "ddos", "downloader", "dropper", "exploit-kit", "keylogger", "ransomware", "remote-access-trojan", "resource-exploitation", "rogue-security-software", "rootkit", "screen-capture", "spyware", "trojan", "unknown", "virus", "webshell", "wiper", "worm"),
	// 10.15 malware-capabilities-ov
	"capabilities": set("accesses-remote-machines", "anti-debugging", "anti-disassembly", "anti-emulation", "anti-memory-forensics", "anti-sandbox", "anti-vm", "captures-input-peripherals", "captures-output-peripherals", "captures-system-state-data", "cleans-traces-of-infection", "commits-fraud", "communicates-with-c2", "compromises-data-availability", "compromises-data-integrity", "compromises-system-availability", "controls-local-machine", "degrades-security-software", "degrades-system-updates", "determines-c2-server", "emails-spam", "escalates-privileges", "evades-av", "exfiltrates-data", "fingerprints-host", "hides-artifacts", "hides-executing-code", "infects-files", "infects-remote-machines", "installs-other-components", "persists-after-system-reboot", "prevents-artifact-access", "prevents-artifact-deletion", "probes-network-environment", "self-modifies", "steals-authentication-credentials", "violates-system-operational-integrity"),
	// 10.20 processor-architecture-ov
	"architecture_execution_envs": set("alpha", "arm", "ia-64", "mips", "powerpc", "sparc", "x86", "x86-64"),
	// 7.3 extension_types enumeration
	"extension_types": set("new-sdo", "new-sco", "new-sro", "property-extension", "toplevel-property-extension"),
}

func set(xs ...string) map[string]bool {
	m := map[string]bool{}
	for _, x := range xs {
		m[x] = true
	}
	return m
}

var (
	// 2.9: an identifier is the object type, two dashes and an RFC 4122 UUID.
	identifierRE = regexp.MustCompile(`^([a-z][a-z0-9]*)+(-[a-z0-9]+)*--[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	// 3.2: created and modified MUST be precise to the millisecond; 2.11
	// timestamps are RFC 3339 in UTC ("Z").
	millisecondRE = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$`)
	timestampRE   = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$`)
)

func sampleFindings(t *testing.T) []v1alpha1.ThreatFinding {
	t.Helper()
	base := time.Date(2026, 11, 23, 10, 15, 2, 0, time.UTC)
	side := v1alpha1.ThreatFinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: "payments", Name: "payments-db-cachesidechannel", UID: types.UID("3b0c8c1e-6f1f-4a43-9b7e-1b7d5b3a9c01"), CreationTimestamp: metav1.NewTime(base.Add(time.Second))},
		Spec: v1alpha1.ThreatFindingSpec{
			Node: "worker-3", Type: v1alpha1.CacheSideChannel, Severity: v1alpha1.SeverityCritical, Score: 0.93, Detections: 7,
			Victim: v1alpha1.Victim{Name: "payments-db", UID: "v-uid", Guest: []v1alpha1.GuestProgram{{PID: 812, Comm: "postgres", Path: "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", Offset: "0x1a2b40", Symbol: "BN_mod_exp_mont_consttime", Samples: 412}}},
			Suspects: []v1alpha1.Suspect{
				{Namespace: "batch", Name: "render-7", UID: "s-uid", Score: 0.9, Role: "Attacker", Guest: []v1alpha1.GuestProgram{{PID: 1337, Comm: "spy", Path: "/opt/spy", Offset: "0x11c0", Samples: 900}}},
				{Namespace: "batch", Name: "noisy", UID: "n-uid", Score: 0.2, Guest: []v1alpha1.GuestProgram{{PID: 9, Comm: "make", Path: "/usr/bin/make"}}},
			},
			FirstSeen: metav1.NewTime(base), LastSeen: metav1.NewTime(base.Add(30 * time.Second)),
		},
		Status: v1alpha1.ThreatFindingStatus{Phase: v1alpha1.PhaseMitigated, Migration: &v1alpha1.MigrationStatus{SourceNode: "worker-3", TargetNode: "worker-5", CompletionTime: &metav1.Time{Time: base.Add(90 * time.Second)}}},
	}
	covert := v1alpha1.ThreatFinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: "tenant-b", Name: "vm-a-buslockcovertchannel", UID: "7d4f2a90-1c55-4c0b-8d0e-0f2c0b1a2b3c"},
		Spec: v1alpha1.ThreatFindingSpec{
			Node: "worker-1", Type: v1alpha1.BusLockCovertChannel, Severity: v1alpha1.SeverityHigh, Score: 0.8,
			Victim:    v1alpha1.Victim{Name: "vm-a"},
			Suspects:  []v1alpha1.Suspect{{Namespace: "tenant-c", Name: "vm-b", Score: 0.8, Role: "Receiver"}},
			FirstSeen: metav1.NewTime(base.Add(-time.Hour)), LastSeen: metav1.NewTime(base.Add(-time.Hour)),
		},
	}
	return []v1alpha1.ThreatFinding{side, covert}
}

func exportJSON(t *testing.T, findings []v1alpha1.ThreatFinding, opts Options) []byte {
	t.Helper()
	out, err := json.MarshalIndent(Export(findings, opts), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func decodeObjects(t *testing.T, data []byte) (map[string]any, []map[string]any) {
	t.Helper()
	var bundle map[string]any
	if err := json.Unmarshal(data, &bundle); err != nil {
		t.Fatal(err)
	}
	var objs []map[string]any
	for _, o := range bundle["objects"].([]any) {
		objs = append(objs, o.(map[string]any))
	}
	return bundle, objs
}

// TestSpecConformance checks every exported object against the rules above.
func TestSpecConformance(t *testing.T) {
	bundle, objs := decodeObjects(t, exportJSON(t, sampleFindings(t), Options{ClusterName: "prod-east"}))

	// 8: a bundle has type "bundle", an identifier and objects.
	if bundle["type"] != "bundle" || !identifierRE.MatchString(bundle["id"].(string)) || !strings.HasPrefix(bundle["id"].(string), "bundle--") {
		t.Errorf("bundle header %v %v", bundle["type"], bundle["id"])
	}

	ids := map[string]string{}
	for _, o := range objs {
		ids[o["id"].(string)] = o["type"].(string)
	}
	for _, o := range objs {
		typ, _ := o["type"].(string)
		id, _ := o["id"].(string)
		t.Run(typ+"/"+id, func(t *testing.T) {
			req, known := requiredProperties[typ]
			if !known {
				t.Fatalf("unexpected object type %q", typ)
			}
			for _, p := range req {
				if _, ok := o[p]; !ok {
					t.Errorf("missing required property %s", p)
				}
			}
			// 3.2 / 3.1: spec_version MUST be "2.1" (on every object here).
			if o["spec_version"] != "2.1" {
				t.Errorf("spec_version = %v, want 2.1", o["spec_version"])
			}
			// 2.9: identifier format, and the prefix is the object's type.
			if !identifierRE.MatchString(id) || !strings.HasPrefix(id, typ+"--") {
				t.Errorf("id %q is not %s--<UUID>", id, typ)
			}
			// Deterministic identifiers are UUIDv5.
			if u, err := uuid.Parse(id[strings.Index(id, "--")+2:]); err != nil || u.Version() != 5 {
				t.Errorf("id %q is not a UUIDv5", id)
			}
			for _, p := range []string{"created", "modified"} {
				if v, ok := o[p]; ok && !millisecondRE.MatchString(v.(string)) {
					t.Errorf("%s = %v: want RFC 3339 UTC with milliseconds", p, v)
				}
			}
			// 3.2: modified MUST be later than or equal to created.
			if c, m := o["created"], o["modified"]; c != nil && m.(string) < c.(string) {
				t.Errorf("modified %v before created %v", m, c)
			}
			for _, p := range []string{"first_seen", "last_seen", "first_observed", "last_observed"} {
				if v, ok := o[p]; ok && !timestampRE.MatchString(v.(string)) {
					t.Errorf("%s = %v is not a STIX timestamp", p, v)
				}
			}
			// 4.11, 4.14, 5.2: last >= first.
			for _, pair := range [][2]string{{"first_seen", "last_seen"}, {"first_observed", "last_observed"}} {
				if f, l := o[pair[0]], o[pair[1]]; f != nil && l != nil && l.(string) < f.(string) {
					t.Errorf("%s %v before %s %v", pair[1], l, pair[0], f)
				}
			}
			// 3.2: confidence is an integer 0..100.
			if c, ok := o["confidence"]; ok {
				if v := c.(float64); v < 0 || v > 100 || v != float64(int(v)) {
					t.Errorf("confidence %v outside 0..100", v)
				}
			}
			for prop, vocab := range vocabularies {
				switch v := o[prop].(type) {
				case string:
					if !vocab[v] {
						t.Errorf("%s %q is not in the spec's vocabulary", prop, v)
					}
				case []any:
					for _, x := range v {
						if !vocab[x.(string)] {
							t.Errorf("%s %q is not in the spec's vocabulary", prop, x)
						}
					}
				}
			}
			// 3.2: external references need a source_name; 4.1: CAPEC and
			// CWE references carry external_id CAPEC-<n> / CWE-<n>.
			if refs, ok := o["external_references"].([]any); ok {
				for _, r := range refs {
					ref := r.(map[string]any)
					if ref["source_name"] == nil || ref["source_name"] == "" {
						t.Errorf("external reference without source_name: %v", ref)
					}
					switch ref["source_name"] {
					case "capec":
						if !regexp.MustCompile(`^CAPEC-\d+$`).MatchString(ref["external_id"].(string)) {
							t.Errorf("capec reference %v", ref)
						}
					case "cwe":
						if !regexp.MustCompile(`^CWE-\d+$`).MatchString(ref["external_id"].(string)) {
							t.Errorf("cwe reference %v", ref)
						}
					}
				}
			}
			checkRefs(t, typ, o, ids)
		})
	}
}

// checkRefs applies the spec's rules about what each reference may point to
// and that every reference resolves inside the bundle.
func checkRefs(t *testing.T, typ string, o map[string]any, ids map[string]string) {
	t.Helper()
	targetOf := func(ref string) string {
		kind, ok := ids[ref]
		if !ok {
			t.Errorf("reference %s does not resolve in the bundle", ref)
		}
		return kind
	}
	scos := set("process", "file", "directory")
	switch typ {
	case "observed-data":
		// 4.14: object_refs MUST contain at least one SCO reference.
		refs := o["object_refs"].([]any)
		nSCO := 0
		for _, r := range refs {
			if scos[targetOf(r.(string))] {
				nSCO++
			}
		}
		if nSCO == 0 {
			t.Error("object_refs holds no SCO")
		}
		// 4.14: number_observed between 1 and 999,999,999.
		if n := o["number_observed"].(float64); n < 1 || n > 999999999 {
			t.Errorf("number_observed %v", n)
		}
	case "sighting":
		// 5.2: sighting_of_ref points to an SDO; observed_data_refs to
		// observed-data; where_sighted_refs to identity or location.
		if k := targetOf(o["sighting_of_ref"].(string)); k != "attack-pattern" {
			t.Errorf("sighting_of_ref targets %s", k)
		}
		for _, r := range o["observed_data_refs"].([]any) {
			if k := targetOf(r.(string)); k != "observed-data" {
				t.Errorf("observed_data_refs targets %s", k)
			}
		}
		for _, r := range o["where_sighted_refs"].([]any) {
			if k := targetOf(r.(string)); k != "identity" && k != "location" {
				t.Errorf("where_sighted_refs targets %s", k)
			}
		}
		if n := o["count"].(float64); n < 0 || n > 999999999 {
			t.Errorf("count %v", n)
		}
	case "relationship":
		targetOf(o["source_ref"].(string))
		targetOf(o["target_ref"].(string))
	case "malware":
		// 4.11: sample_refs point to file or artifact SCOs.
		for _, r := range o["sample_refs"].([]any) {
			if k := targetOf(r.(string)); k != "file" && k != "artifact" {
				t.Errorf("sample_refs targets %s", k)
			}
		}
	case "process":
		if r, ok := o["image_ref"].(string); ok && targetOf(r) != "file" {
			t.Errorf("image_ref is not a file")
		}
		// 7.3: an extension on an object is keyed by its extension-definition.
		ext, _ := o["extensions"].(map[string]any)
		for k := range ext {
			if targetOf(k) != "extension-definition" {
				t.Errorf("extension key %s is not an extension-definition", k)
			}
		}
	case "file":
		if r, ok := o["parent_directory_ref"].(string); ok && targetOf(r) != "directory" {
			t.Errorf("parent_directory_ref is not a directory")
		}
	}
	if c, ok := o["created_by_ref"].(string); ok && targetOf(c) != "identity" {
		t.Errorf("created_by_ref is not an identity")
	}
}

// TestContent checks that the bundle says what the findings say.
func TestContent(t *testing.T) {
	_, objs := decodeObjects(t, exportJSON(t, sampleFindings(t), Options{ClusterName: "prod-east"}))
	count := map[string]int{}
	var malware []map[string]any
	for _, o := range objs {
		count[o["type"].(string)]++
		if o["type"] == "malware" {
			malware = append(malware, o)
		}
	}
	for typ, want := range map[string]int{"identity": 2, "infrastructure": 2, "attack-pattern": 2, "observed-data": 2, "sighting": 2, "malware": 1} {
		if count[typ] != want {
			t.Errorf("%d %s objects, want %d", count[typ], typ, want)
		}
	}
	// Only the suspect with a high score and an attributed program becomes
	// malware; the low-scoring neighbour running make does not.
	if len(malware) == 1 && malware[0]["name"] != "spy" {
		t.Errorf("malware %v, want the attributed spy program", malware[0]["name"])
	}
	for _, o := range objs {
		if o["type"] == "sighting" && strings.Contains(o["description"].(string), "CacheSideChannel") {
			if !strings.Contains(o["description"].(string), "migrated from worker-3 to worker-5") || o["count"].(float64) != 7 {
				t.Errorf("sighting %v lacks the response or count", o)
			}
		}
	}
}

func TestDeterministic(t *testing.T) {
	a := exportJSON(t, sampleFindings(t), Options{ClusterName: "c"})
	b := exportJSON(t, sampleFindings(t), Options{ClusterName: "c"})
	if !bytes.Equal(a, b) {
		t.Fatal("two exports of the same findings differ")
	}
	// The input order does not matter either.
	f := sampleFindings(t)
	f[0], f[1] = f[1], f[0]
	if c := exportJSON(t, f, Options{ClusterName: "c"}); !bytes.Equal(a, c) {
		t.Fatal("export depends on the order of findings")
	}
}

func TestFilters(t *testing.T) {
	sightings := func(opts Options) int {
		_, objs := decodeObjects(t, exportJSON(t, sampleFindings(t), opts))
		n := 0
		for _, o := range objs {
			if o["type"] == "sighting" {
				n++
			}
		}
		return n
	}
	since := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		opts Options
		want int
	}{
		{"all", Options{}, 2},
		{"namespace", Options{Namespace: "payments"}, 1},
		{"other namespace", Options{Namespace: "nothing-here"}, 0},
		{"since", Options{Since: since}, 1},
		{"type", Options{Types: []v1alpha1.ThreatType{v1alpha1.BusLockCovertChannel}}, 1},
		{"two types", Options{Types: []v1alpha1.ThreatType{v1alpha1.BusLockCovertChannel, v1alpha1.CacheSideChannel}}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sightings(tc.opts); got != tc.want {
				t.Errorf("got %d sightings, want %d", got, tc.want)
			}
		})
	}
}

// TestSampleFile exports the complete example finding kept in config/samples.
func TestSampleFile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "config", "samples", "threatfinding_exported.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	findings, err := ParseFindings(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(findings) != 1 || findings[0].Status.Phase != v1alpha1.PhaseMitigated {
		t.Fatalf("parsed %d findings %+v", len(findings), findings)
	}
	// A single object and a ThreatFindingList parse too.
	single, _ := yaml.Marshal(findings[0])
	single = append([]byte("apiVersion: sidewatch.io/v1alpha1\nkind: ThreatFinding\n"), single...)
	if got, err := ParseFindings(single); err != nil || len(got) != 1 {
		t.Errorf("single object: %d findings, %v", len(got), err)
	}
}

func TestParseFindingsErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", `ConfigMap "x" is not a ThreatFinding`},
		{"apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n", `item 1: Pod "p" is not a ThreatFinding`},
		{"{not yaml: [", "not YAML or JSON"},
	} {
		if _, err := ParseFindings([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseFindings(%q) = %v, want error containing %q", tc.in, err, tc.want)
		}
	}
}
