package controllers

import (
	"context"
	"fmt"

	virtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// Field indexes on the manager's cache.
const (
	// indexFindingVictim maps a ThreatFinding to spec.victim.name.
	indexFindingVictim = "spec.victim.name"
	// indexMigrationVMI maps a VirtualMachineInstanceMigration to
	// spec.vmiName.
	indexMigrationVMI = "spec.vmiName"
	// indexMigrationFinding maps a VirtualMachineInstanceMigration to the
	// uid of the ThreatFinding that controls it.
	indexMigrationFinding = "metadata.controller.threatFinding"
)

// Index is one field index: what it indexes and how.
type Index struct {
	Object  client.Object
	Field   string
	Extract client.IndexerFunc
}

// Indexes lists the field indexes the reconcilers rely on. SetupIndexes
// installs them on a manager; fake-client tests pass them to
// fake.ClientBuilder.WithIndex.
func Indexes() []Index {
	return []Index{
		{&v1alpha1.ThreatFinding{}, indexFindingVictim, func(o client.Object) []string {
			return []string{o.(*v1alpha1.ThreatFinding).Spec.Victim.Name}
		}},
		{&virtv1.VirtualMachineInstanceMigration{}, indexMigrationVMI, func(o client.Object) []string {
			return []string{o.(*virtv1.VirtualMachineInstanceMigration).Spec.VMIName}
		}},
		{&virtv1.VirtualMachineInstanceMigration{}, indexMigrationFinding, func(o client.Object) []string {
			if uid := controllingFinding(o); uid != "" {
				return []string{uid}
			}
			return nil
		}},
	}
}

// SetupIndexes installs Indexes on the manager's cache.
func SetupIndexes(ctx context.Context, fi client.FieldIndexer) error {
	for _, ix := range Indexes() {
		if err := fi.IndexField(ctx, ix.Object, ix.Field, ix.Extract); err != nil {
			return fmt.Errorf("index %s: %w", ix.Field, err)
		}
	}
	return nil
}

// controllingFinding returns the uid of the ThreatFinding that controls o,
// or "".
func controllingFinding(o client.Object) string {
	for _, ref := range o.GetOwnerReferences() {
		if ref.Controller != nil && *ref.Controller && ref.Kind == "ThreatFinding" &&
			ref.APIVersion == v1alpha1.GroupVersion.String() {
			return string(ref.UID)
		}
	}
	return ""
}

// controllingFindingName returns the name of the ThreatFinding that
// controls o, or "".
func controllingFindingName(o client.Object) string {
	for _, ref := range o.GetOwnerReferences() {
		if ref.Controller != nil && *ref.Controller && ref.Kind == "ThreatFinding" &&
			ref.APIVersion == v1alpha1.GroupVersion.String() {
			return ref.Name
		}
	}
	return ""
}
