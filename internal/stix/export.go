package stix

import (
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

var (
	// objectNamespace derives the UUIDv5 of sidewatch's domain and
	// relationship objects.
	objectNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://sidewatch.io/stix"))
	// scoNamespace is the namespace STIX 2.1 (section 2.9) prescribes for
	// deterministic cyber-observable identifiers.
	scoNamespace = uuid.MustParse("00abedb4-aa42-466c-9c01-fed23315a9b7")
	// catalogTime dates the objects that do not depend on any finding
	// (the producer identity, attack patterns, the extension definition),
	// so that every export carries the same versions of them.
	catalogTime = Timestamp(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
)

// VMIExtensionName is the property extension that ties a process SCO to a
// KubeVirt VMI.
const VMIExtensionName = "x-sidewatch-vmi"

// Options filter and label an export.
type Options struct {
	// ClusterName names the identity of the cluster (default "kubernetes").
	ClusterName string
	// Namespace keeps only findings in this namespace ("" keeps all).
	Namespace string
	// Since keeps only findings last seen at or after this time.
	Since time.Time
	// Types keeps only findings of these types (empty keeps all).
	Types []v1alpha1.ThreatType
}

// attackPatterns describes each threat type. The references name the
// weakness (CWE) and the attack pattern catalogue entries (CAPEC) that fit
// it; docs/stix.md explains the choice.
var attackPatterns = map[v1alpha1.ThreatType]struct {
	name, description string
	aliases           []string
	refs              []ExternalReference
}{
	v1alpha1.CacheCovertChannel: {
		name:        "Cross-VM cache covert channel",
		description: "Two co-located virtual machines exchange data by modulating contention in a shared CPU cache (cache oscillation): the sender evicts or loads cache sets in a bit pattern, the receiver times its own accesses. Detected from the autocorrelation of guest-only cache-miss event trains (CC-Hunter).",
		aliases:     []string{"cache oscillation covert channel", "Prime+Probe covert channel"},
		refs: []ExternalReference{
			{SourceName: "cwe", ExternalID: "CWE-385", URL: "https://cwe.mitre.org/data/definitions/385.html", Description: "Covert Timing Channel"},
			{SourceName: "cwe", ExternalID: "CWE-514", URL: "https://cwe.mitre.org/data/definitions/514.html", Description: "Covert Channel"},
			{SourceName: "capec", ExternalID: "CAPEC-124", URL: "https://capec.mitre.org/data/definitions/124.html", Description: "Shared Resource Manipulation"},
		},
	},
	v1alpha1.BusLockCovertChannel: {
		name:        "Cross-VM memory-bus lock covert channel",
		description: "Two co-located virtual machines exchange data through the memory bus: the sender issues bursts of bus or split locks (atomic operations across cache lines) that stall every core, the receiver times its memory accesses. Detected from periodic bursts of guest bus/split locks.",
		aliases:     []string{"bus-lock covert channel", "split-lock covert channel"},
		refs: []ExternalReference{
			{SourceName: "cwe", ExternalID: "CWE-385", URL: "https://cwe.mitre.org/data/definitions/385.html", Description: "Covert Timing Channel"},
			{SourceName: "cwe", ExternalID: "CWE-514", URL: "https://cwe.mitre.org/data/definitions/514.html", Description: "Covert Channel"},
			{SourceName: "capec", ExternalID: "CAPEC-124", URL: "https://capec.mitre.org/data/definitions/124.html", Description: "Shared Resource Manipulation"},
		},
	},
	v1alpha1.CacheSideChannel: {
		name:        "Cross-VM cache side-channel attack",
		description: "A virtual machine spies on a co-located victim through a shared CPU cache (Prime+Probe, Flush+Reload) while the victim runs sensitive code such as cryptography, to recover secrets from the victim's memory access pattern. Detected by correlating the victim's sensitive phases with cache anomalies in co-located VMs (CloudRadar).",
		aliases:     []string{"Prime+Probe", "Flush+Reload"},
		refs: []ExternalReference{
			{SourceName: "cwe", ExternalID: "CWE-1300", URL: "https://cwe.mitre.org/data/definitions/1300.html", Description: "Improper Protection of Physical Side Channels"},
			{SourceName: "capec", ExternalID: "CAPEC-189", URL: "https://capec.mitre.org/data/definitions/189.html", Description: "Black Box Reverse Engineering (side-channel analysis)"},
			{SourceName: "capec", ExternalID: "CAPEC-124", URL: "https://capec.mitre.org/data/definitions/124.html", Description: "Shared Resource Manipulation"},
		},
	},
}

func objectID(kind string, parts ...string) string {
	return kind + "--" + uuid.NewSHA1(objectNamespace, []byte(kind+"/"+strings.Join(parts, "/"))).String()
}

// scoID follows STIX 2.1's deterministic identifiers: UUIDv5 in the STIX
// namespace over the canonical JSON of the ID-contributing properties.
func scoID(kind string, contributing map[string]any) string {
	b, _ := json.Marshal(contributing) // map keys are sorted: canonical enough for our string values
	return kind + "--" + uuid.NewSHA1(scoNamespace, b).String()
}

type builder struct {
	opts      Options
	producer  string
	cluster   string
	extension string
	seen      map[string]bool
	objects   []any
}

func (b *builder) add(id string, obj any) {
	if b.seen[id] {
		return
	}
	b.seen[id] = true
	b.objects = append(b.objects, obj)
}

func common(kind, id, createdBy string, created, modified Timestamp) Common {
	return Common{Type: kind, SpecVersion: SpecVersion, ID: id, Created: created, Modified: modified, CreatedByRef: createdBy}
}

// Export builds a bundle of the findings that pass the filters.
func Export(findings []v1alpha1.ThreatFinding, opts Options) *Bundle {
	if opts.ClusterName == "" {
		opts.ClusterName = "kubernetes"
	}
	b := &builder{opts: opts, seen: map[string]bool{}}
	b.producer = objectID("identity", "producer", "sidewatch")
	b.add(b.producer, &Identity{
		Common:        common("identity", b.producer, "", catalogTime, catalogTime),
		Name:          "sidewatch",
		Description:   "sidewatch detects cross-VM side-channel and covert-channel attacks on KubeVirt clusters from the host.",
		IdentityClass: "system",
	})
	b.cluster = objectID("identity", "cluster", opts.ClusterName)
	b.add(b.cluster, &Identity{
		Common:        common("identity", b.cluster, b.producer, catalogTime, catalogTime),
		Name:          opts.ClusterName,
		Description:   "Kubernetes cluster running KubeVirt virtual machines, watched by sidewatch.",
		IdentityClass: "system",
	})
	b.extension = objectID("extension-definition", VMIExtensionName)
	b.add(b.extension, &ExtensionDefinition{
		Common:         common("extension-definition", b.extension, b.producer, catalogTime, catalogTime),
		Name:           VMIExtensionName,
		Description:    "Ties a process to the KubeVirt VirtualMachineInstance it runs and states its role in an attack (victim, sender, receiver, attacker).",
		Schema:         "https://github.com/sidewatch/sidewatch/blob/main/docs/stix.md#x-sidewatch-vmi",
		Version:        "1.0.0",
		ExtensionTypes: []string{"property-extension"},
	})

	kept := filter(findings, opts)
	for i := range kept {
		b.addFinding(&kept[i])
	}
	return &Bundle{
		Type:    "bundle",
		ID:      "bundle--" + uuid.NewSHA1(objectNamespace, []byte(bundleKey(kept, opts))).String(),
		Objects: b.objects,
	}
}

func bundleKey(findings []v1alpha1.ThreatFinding, opts Options) string {
	parts := []string{"bundle", opts.ClusterName}
	for _, f := range findings {
		parts = append(parts, string(f.UID), f.Namespace+"/"+f.Name, f.ResourceVersion)
	}
	return strings.Join(parts, "/")
}

func filter(findings []v1alpha1.ThreatFinding, opts Options) []v1alpha1.ThreatFinding {
	var out []v1alpha1.ThreatFinding
	for _, f := range findings {
		if opts.Namespace != "" && f.Namespace != opts.Namespace {
			continue
		}
		if !opts.Since.IsZero() && f.Spec.LastSeen.Time.Before(opts.Since) {
			continue
		}
		if len(opts.Types) > 0 && !hasType(opts.Types, f.Spec.Type) {
			continue
		}
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

func hasType(types []v1alpha1.ThreatType, t v1alpha1.ThreatType) bool {
	for _, x := range types {
		if x == t {
			return true
		}
	}
	return false
}

// findingUID identifies a finding even when it was saved without metadata.uid.
func findingUID(f *v1alpha1.ThreatFinding) string {
	if f.UID != "" {
		return string(f.UID)
	}
	return f.Namespace + "/" + f.Name
}

func (b *builder) attackPattern(t v1alpha1.ThreatType) string {
	id := objectID("attack-pattern", string(t))
	ap, ok := attackPatterns[t]
	if !ok {
		ap.name, ap.description = string(t), "A cross-VM attack reported by sidewatch."
	}
	c := common("attack-pattern", id, b.producer, catalogTime, catalogTime)
	c.ExternalReferences = append([]ExternalReference{{
		SourceName: "sidewatch", ExternalID: string(t),
		URL: "https://github.com/sidewatch/sidewatch/blob/main/docs/stix.md#" + strings.ToLower(string(t)),
	}}, ap.refs...)
	b.add(id, &AttackPattern{Common: c, Name: ap.name, Description: ap.description, Aliases: ap.aliases})
	return id
}

func (b *builder) node(name string) string {
	id := objectID("infrastructure", b.opts.ClusterName, name)
	b.add(id, &Infrastructure{
		Common:      common("infrastructure", id, b.cluster, catalogTime, catalogTime),
		Name:        name,
		Description: fmt.Sprintf("Kubernetes node %s of cluster %s, hosting KubeVirt virtual machines.", name, b.opts.ClusterName),
	})
	return id
}

// vmiProcess is the SCO for a VMI's QEMU process, carrying the VMI identity.
func (b *builder) vmiProcess(namespace, name, uid, node, role string, score float64) string {
	id := scoID("process", map[string]any{"x_vmi": namespace + "/" + name + "/" + uid})
	b.add(id, &Process{
		Type: "process", SpecVersion: SpecVersion, ID: id,
		CommandLine: fmt.Sprintf("qemu-system-x86_64 -name guest=%s_%s", namespace, name),
		Extensions: map[string]any{b.extension: VMIExtension{
			ExtensionType: "property-extension",
			Namespace:     namespace, Name: name, UID: uid, Node: node, Role: role, Score: score,
		}},
	})
	return id
}

// guestProcess adds the SCOs for a guest program: its process and, when the
// path is known, its file (and directory).
func (b *builder) guestProcess(vmiUID string, g v1alpha1.GuestProgram) []string {
	var refs []string
	var fileRef string
	if g.Path != "" && g.Path != "[kernel]" {
		fileRef = b.file(g.Path)
		refs = append(refs, fileRef)
	}
	p := &Process{Type: "process", SpecVersion: SpecVersion, ImageRef: fileRef}
	if g.PID > 0 {
		pid := int64(g.PID)
		p.PID = &pid
	}
	p.CommandLine = g.Comm
	p.ID = scoID("process", map[string]any{"x_guest": fmt.Sprintf("%s/%d/%s", vmiUID, g.PID, g.Comm)})
	b.add(p.ID, p)
	return append(refs, p.ID)
}

// file adds the file SCO of a guest path (and its directory) and returns its id.
func (b *builder) file(p string) string {
	dir, base := path.Split(p)
	f := &File{Type: "file", SpecVersion: SpecVersion, Name: base}
	contributing := map[string]any{"name": base}
	if dir = path.Clean(dir); dir != "." && dir != "" {
		d := &Directory{Type: "directory", SpecVersion: SpecVersion, Path: dir}
		d.ID = scoID("directory", map[string]any{"path": dir})
		b.add(d.ID, d)
		f.ParentDirectoryRef = d.ID
		contributing["parent_directory_ref"] = d.ID
	}
	f.ID = scoID("file", contributing)
	b.add(f.ID, f)
	return f.ID
}

func (b *builder) addFinding(f *v1alpha1.ThreatFinding) {
	uid := findingUID(f)
	created := Timestamp(f.CreationTimestamp.Time)
	if f.CreationTimestamp.IsZero() {
		created = Timestamp(f.Spec.FirstSeen.Time)
	}
	modified := Timestamp(latest(f))
	if time.Time(modified).Before(time.Time(created)) {
		modified = created
	}
	confidence := int(f.Spec.Score*100 + 0.5)

	pattern := b.attackPattern(f.Spec.Type)
	node := b.node(f.Spec.Node)
	b.relationship("targets", pattern, node, created, modified,
		fmt.Sprintf("%s seen on node %s", f.Spec.Type, f.Spec.Node))

	refs := []string{b.vmiProcess(f.Namespace, f.Spec.Victim.Name, string(f.Spec.Victim.UID), f.Spec.Node, "Victim", 0)}
	for _, g := range f.Spec.Victim.Guest {
		refs = append(refs, b.guestProcess(string(f.Spec.Victim.UID), g)...)
	}
	var suspects []string
	for _, s := range f.Spec.Suspects {
		role := s.Role
		if role == "" {
			role = "Unknown"
		}
		refs = append(refs, b.vmiProcess(s.Namespace, s.Name, string(s.UID), f.Spec.Node, role, s.Score))
		for _, g := range s.Guest {
			refs = append(refs, b.guestProcess(string(s.UID), g)...)
		}
		suspects = append(suspects, fmt.Sprintf("%s/%s (%s, score %.2f)", s.Namespace, s.Name, strings.ToLower(role), s.Score))
		b.malware(f, s, pattern, created, modified)
	}

	observed := objectID("observed-data", uid)
	count := f.Spec.Detections
	if count < 1 {
		count = 1
	}
	b.add(observed, &ObservedData{
		Common:         withConfidence(common("observed-data", observed, b.cluster, created, modified), confidence),
		FirstObserved:  Timestamp(f.Spec.FirstSeen.Time),
		LastObserved:   Timestamp(f.Spec.LastSeen.Time),
		NumberObserved: count,
		ObjectRefs:     refs,
	})

	sighting := objectID("sighting", uid)
	sc := withConfidence(common("sighting", sighting, b.cluster, created, modified), confidence)
	sc.ExternalReferences = []ExternalReference{{
		SourceName: "sidewatch", ExternalID: f.Namespace + "/" + f.Name,
		Description: "ThreatFinding " + f.Namespace + "/" + f.Name + " (kubectl get threatfinding -n " + f.Namespace + " " + f.Name + ")",
	}}
	b.add(sighting, &Sighting{
		Common:           sc,
		Description:      describe(f, suspects),
		FirstSeen:        Timestamp(f.Spec.FirstSeen.Time),
		LastSeen:         lastSeenAfterFirst(f),
		Count:            count,
		SightingOfRef:    pattern,
		ObservedDataRefs: []string{observed},
		WhereSightedRefs: []string{b.cluster},
	})
}

func withConfidence(c Common, confidence int) Common {
	c.Confidence = &confidence
	return c
}

// lastSeenAfterFirst: STIX requires last_seen >= first_seen; the CRD
// enforces it too, but files may come from anywhere.
func lastSeenAfterFirst(f *v1alpha1.ThreatFinding) Timestamp {
	if f.Spec.LastSeen.Time.Before(f.Spec.FirstSeen.Time) {
		return Timestamp(f.Spec.FirstSeen.Time)
	}
	return Timestamp(f.Spec.LastSeen.Time)
}

// latest is the last time the finding changed that the export shows.
func latest(f *v1alpha1.ThreatFinding) time.Time {
	t := f.Spec.LastSeen.Time
	if r := f.Status.ResolvedTime; r != nil && r.After(t) {
		t = r.Time
	}
	if m := f.Status.Migration; m != nil && m.CompletionTime != nil && m.CompletionTime.After(t) {
		t = m.CompletionTime.Time
	}
	return t
}

func describe(f *v1alpha1.ThreatFinding, suspects []string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s (%s, score %.2f) on node %s: victim VMI %s/%s", f.Spec.Type, f.Spec.Severity, f.Spec.Score, f.Spec.Node, f.Namespace, f.Spec.Victim.Name)
	if len(suspects) > 0 {
		fmt.Fprintf(&sb, "; suspects %s", strings.Join(suspects, ", "))
	}
	if f.Status.Phase != "" {
		fmt.Fprintf(&sb, "; response: %s", f.Status.Phase)
		if m := f.Status.Migration; m != nil && m.TargetNode != "" {
			fmt.Fprintf(&sb, ", victim migrated from %s to %s", m.SourceNode, m.TargetNode)
		}
	}
	return sb.String()
}

func (b *builder) relationship(kind, src, dst string, created, modified Timestamp, description string) {
	id := objectID("relationship", src, kind, dst)
	b.add(id, &Relationship{
		Common:           common("relationship", id, b.cluster, created, modified),
		RelationshipType: kind, SourceRef: src, TargetRef: dst, Description: description,
	})
}

// malware records a suspect's guest program as malware, but only where the
// evidence justifies it: the suspect scored at least 0.5 and introspection
// attributed its samples to a named user-space program.
func (b *builder) malware(f *v1alpha1.ThreatFinding, s v1alpha1.Suspect, pattern string, created, modified Timestamp) {
	if s.Score < 0.5 {
		return
	}
	for _, g := range s.Guest {
		if g.Path == "" || g.Path == "[kernel]" {
			continue
		}
		name := path.Base(g.Path)
		id := objectID("malware", findingUID(f), s.Namespace, s.Name, g.Path)
		file := b.file(g.Path)
		capability := "captures-system-state-data"
		if f.Spec.Type != v1alpha1.CacheSideChannel {
			capability = "exfiltrates-data"
		}
		first, last := Timestamp(f.Spec.FirstSeen.Time), lastSeenAfterFirst(f)
		b.add(id, &Malware{
			Common:               withConfidence(common("malware", id, b.cluster, created, modified), int(s.Score*100+0.5)),
			Name:                 name,
			Description:          fmt.Sprintf("Guest program %s (pid %d, %q) in VMI %s/%s, attributed by introspection of sampled guest addresses (%d samples).", g.Path, g.PID, g.Comm, s.Namespace, s.Name, g.Samples),
			MalwareTypes:         []string{"spyware"},
			IsFamily:             false,
			FirstSeen:            &first,
			LastSeen:             &last,
			ArchitectureExecEnvs: []string{"x86-64"},
			Capabilities:         []string{capability},
			SampleRefs:           []string{file},
		})
		b.relationship("uses", id, pattern, created, modified, "")
		return // one program per suspect: the one with most samples comes first
	}
}
