// Package stix turns ThreatFindings into a STIX 2.1 bundle so that responders
// can share what sidewatch saw with threat-intelligence platforms.
//
// Mapping (docs/stix.md explains the choices):
//
//	the cluster            -> identity (identity_class "system"); creator of every object and where sightings happened
//	each node              -> infrastructure
//	each threat type       -> attack-pattern with CWE and CAPEC external references
//	each VMI               -> process SCO (the VMI's QEMU process) with the x-sidewatch-vmi property extension
//	each guest program     -> process SCO (+ file SCO for its executable or library)
//	each finding           -> observed-data (what was seen) + sighting (of the attack pattern, where, how often)
//	attributed suspect code-> malware (spyware), only when introspection named the suspect's guest program
//	links                  -> relationship: attack-pattern targets infrastructure, malware uses attack-pattern
//
// Identifiers are UUIDv5 derived from stable inputs (the finding's UID, the
// node name, the type), so exporting the same findings twice yields the same
// objects.
package stix

import (
	"encoding/json"
	"time"
)

// SpecVersion is the STIX version of every object.
const SpecVersion = "2.1"

// timestampLayout is RFC 3339 in UTC with exactly milliseconds, as STIX
// requires for created and modified.
const timestampLayout = "2006-01-02T15:04:05.000Z"

// Timestamp is a STIX timestamp.
type Timestamp time.Time

// MarshalJSON writes the timestamp in UTC with millisecond precision.
func (t Timestamp) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Time(t).UTC().Format(timestampLayout))
}

// UnmarshalJSON reads an RFC 3339 timestamp.
func (t *Timestamp) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return err
	}
	*t = Timestamp(v)
	return nil
}

// ExternalReference points outside STIX (CWE, CAPEC, documentation).
type ExternalReference struct {
	SourceName  string `json:"source_name"`
	Description string `json:"description,omitempty"`
	URL         string `json:"url,omitempty"`
	ExternalID  string `json:"external_id,omitempty"`
}

// Common holds the properties every STIX domain and relationship object has.
type Common struct {
	Type               string              `json:"type"`
	SpecVersion        string              `json:"spec_version"`
	ID                 string              `json:"id"`
	Created            Timestamp           `json:"created"`
	Modified           Timestamp           `json:"modified"`
	CreatedByRef       string              `json:"created_by_ref,omitempty"`
	Labels             []string            `json:"labels,omitempty"`
	Confidence         *int                `json:"confidence,omitempty"`
	ExternalReferences []ExternalReference `json:"external_references,omitempty"`
}

// Identity is the cluster that saw the attacks.
type Identity struct {
	Common
	Name          string `json:"name"`
	Description   string `json:"description,omitempty"`
	IdentityClass string `json:"identity_class,omitempty"`
}

// Infrastructure is a node.
type Infrastructure struct {
	Common
	Name                string   `json:"name"`
	Description         string   `json:"description,omitempty"`
	InfrastructureTypes []string `json:"infrastructure_types,omitempty"`
}

// AttackPattern is one kind of attack sidewatch detects.
type AttackPattern struct {
	Common
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Aliases     []string `json:"aliases,omitempty"`
}

// Malware is guest code introspection attributed an attack to.
type Malware struct {
	Common
	Name                 string     `json:"name"`
	Description          string     `json:"description,omitempty"`
	MalwareTypes         []string   `json:"malware_types,omitempty"`
	IsFamily             bool       `json:"is_family"`
	FirstSeen            *Timestamp `json:"first_seen,omitempty"`
	LastSeen             *Timestamp `json:"last_seen,omitempty"`
	ArchitectureExecEnvs []string   `json:"architecture_execution_envs,omitempty"`
	Capabilities         []string   `json:"capabilities,omitempty"`
	SampleRefs           []string   `json:"sample_refs,omitempty"`
}

// ObservedData is what the node agent saw for one finding.
type ObservedData struct {
	Common
	FirstObserved  Timestamp `json:"first_observed"`
	LastObserved   Timestamp `json:"last_observed"`
	NumberObserved int64     `json:"number_observed"`
	ObjectRefs     []string  `json:"object_refs"`
}

// Sighting says an attack pattern was seen, where and how often.
type Sighting struct {
	Common
	Description      string    `json:"description,omitempty"`
	FirstSeen        Timestamp `json:"first_seen"`
	LastSeen         Timestamp `json:"last_seen"`
	Count            int64     `json:"count"`
	SightingOfRef    string    `json:"sighting_of_ref"`
	ObservedDataRefs []string  `json:"observed_data_refs,omitempty"`
	WhereSightedRefs []string  `json:"where_sighted_refs,omitempty"`
	Summary          bool      `json:"summary"`
}

// Relationship links two objects.
type Relationship struct {
	Common
	RelationshipType string `json:"relationship_type"`
	Description      string `json:"description,omitempty"`
	SourceRef        string `json:"source_ref"`
	TargetRef        string `json:"target_ref"`
}

// ExtensionDefinition declares the x-sidewatch-vmi property extension.
type ExtensionDefinition struct {
	Common
	Name           string   `json:"name"`
	Description    string   `json:"description,omitempty"`
	Schema         string   `json:"schema"`
	Version        string   `json:"version"`
	ExtensionTypes []string `json:"extension_types"`
}

// Process is a process SCO: a VMI's QEMU process or a guest process.
type Process struct {
	Type        string         `json:"type"`
	SpecVersion string         `json:"spec_version"`
	ID          string         `json:"id"`
	PID         *int64         `json:"pid,omitempty"`
	CommandLine string         `json:"command_line,omitempty"`
	ImageRef    string         `json:"image_ref,omitempty"`
	Extensions  map[string]any `json:"extensions,omitempty"`
}

// File is a file SCO: a guest executable or library.
type File struct {
	Type               string `json:"type"`
	SpecVersion        string `json:"spec_version"`
	ID                 string `json:"id"`
	Name               string `json:"name"`
	ParentDirectoryRef string `json:"parent_directory_ref,omitempty"`
}

// Directory is a directory SCO: where a guest file lies.
type Directory struct {
	Type        string `json:"type"`
	SpecVersion string `json:"spec_version"`
	ID          string `json:"id"`
	Path        string `json:"path"`
}

// VMIExtension is the content of the x-sidewatch-vmi extension on a process
// SCO: which KubeVirt VMI the process runs and what it did in the attack.
type VMIExtension struct {
	ExtensionType string  `json:"extension_type"`
	Namespace     string  `json:"namespace"`
	Name          string  `json:"name"`
	UID           string  `json:"uid,omitempty"`
	Node          string  `json:"node,omitempty"`
	Role          string  `json:"role"`
	Score         float64 `json:"score,omitempty"`
}

// Bundle is a STIX bundle.
type Bundle struct {
	Type    string `json:"type"`
	ID      string `json:"id"`
	Objects []any  `json:"objects"`
}
