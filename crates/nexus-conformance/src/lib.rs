//! Conformance suites for the Nexus ports.
//!
//! A backend crate runs every case against its own implementation with one macro call in its
//! tests: [`event_store_suite!`] and [`read_store_suite!`]. The factory it passes returns a fresh,
//! empty store (its own temp dir or schema) and a guard that cleans it up when dropped. A backend
//! that cannot reach its server must make the factory panic: a suite never passes silently.
//!
//! Architecture invariant: cases talk only through the port traits, so passing them means the
//! same thing for every backend.

pub mod event_queue;
pub mod event_store;
pub mod event_stream;
pub mod read_store;
pub mod schema_store;
pub mod snapshot_store;

use std::any::Any;
use std::sync::Arc;

/// A store under test and whatever keeps it alive (temp dir, schema guard).
pub struct Subject<T: ?Sized> {
    pub store: Arc<T>,
    pub guard: Box<dyn Any + Send>,
}

/// Runs every event-store case against `$factory`, an `async fn() -> Subject<dyn EventStore>`.
#[macro_export]
macro_rules! event_store_suite {
    ($factory:ident) => {
        $crate::event_store_suite!(@cases $factory;
            append_assigns_versions_and_positions,
            wrong_expected_version_appends_nothing,
            only_one_of_two_racing_appends_wins,
            duplicate_command_id_returns_the_first_record,
            failed_append_in_a_batch_leaves_others_intact,
            change_feed_is_gap_free_under_concurrent_writers,
            read_by_type_filters_type_and_time,
            wait_past_wakes_on_append,
        );
    };
    (@cases $factory:ident; $($case:ident),* $(,)?) => {
        mod event_store_conformance {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let subject = super::$factory().await;
                    $crate::event_store::$case(subject.store.clone()).await;
                    drop(subject);
                }
            )*
        }
    };
}

/// Runs every read-store case against `$factory`, an `async fn() -> Subject<dyn ReadStore>`.
#[macro_export]
macro_rules! read_store_suite {
    ($factory:ident) => {
        $crate::read_store_suite!(@cases $factory;
            commit_writes_documents_and_checkpoint,
            older_versions_never_overwrite_newer,
            replace_overwrites_the_same_version_only,
            list_filters_sorts_and_pages,
            load_returns_existing_documents_only,
            search_ranks_filters_and_counts_facets,
            search_filters_match_like_list_filters,
            one_word_ranks_by_frequency_and_length_in_pages,
            a_shadow_swaps_in_atomically,
            list_totals_stay_exact_as_documents_change,
            list_sorts_on_indexed_fields_in_pages,
        );
    };
    (@cases $factory:ident; $($case:ident),* $(,)?) => {
        mod read_store_conformance {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let subject = super::$factory().await;
                    $crate::read_store::$case(subject.store.clone()).await;
                    drop(subject);
                }
            )*
        }
    };
}

/// An event store and the snapshot store kept beside it (the sweep reads both).
pub struct SnapshotSubject {
    pub events: Arc<dyn nexus_core::EventStore>,
    pub snapshots: Arc<dyn nexus_core::SnapshotStore>,
    pub guard: Box<dyn Any + Send>,
}

/// Runs every snapshot-store case against `$factory`, an `async fn() -> SnapshotSubject`.
#[macro_export]
macro_rules! snapshot_store_suite {
    ($factory:ident) => {
        $crate::snapshot_store_suite!(@cases $factory;
            latest_is_the_highest_version,
            stale_lists_active_aggregates_with_old_snapshots,
        );
    };
    (@cases $factory:ident; $($case:ident),* $(,)?) => {
        mod snapshot_store_conformance {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let subject = super::$factory().await;
                    $crate::snapshot_store::$case(subject.events.clone(), subject.snapshots.clone()).await;
                    drop(subject);
                }
            )*
        }
    };
}

/// Runs every schema-store case against `$factory`, an `async fn() -> Subject<dyn SchemaStore>`.
#[macro_export]
macro_rules! schema_store_suite {
    ($factory:ident) => {
        $crate::schema_store_suite!(@cases $factory;
            versions_ids_and_idempotent_registration,
            compatibility_settings_are_global_and_per_subject,
        );
    };
    (@cases $factory:ident; $($case:ident),* $(,)?) => {
        mod schema_store_conformance {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let subject = super::$factory().await;
                    $crate::schema_store::$case(subject.store.clone()).await;
                    drop(subject);
                }
            )*
        }
    };
}

/// Runs every event-queue case against `$factory`, an `async fn() -> Subject<dyn EventQueue>`.
/// Each case gets its own consumer-name prefix.
#[macro_export]
macro_rules! event_queue_suite {
    ($factory:ident) => {
        $crate::event_queue_suite!(@cases $factory;
            fan_out_reaches_every_subscriber_once,
            only_subscribers_at_publish_time_receive,
            nack_redelivers_after_the_delay_and_counts_attempts,
            dead_letters_after_max_deliveries_then_retry_and_skip,
            dead_letter_puts_an_event_straight_in_the_dlq,
        );
    };
    (@cases $factory:ident; $($case:ident),* $(,)?) => {
        mod event_queue_conformance {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let subject = super::$factory().await;
                    $crate::event_queue::$case(subject.store.clone(), stringify!($case)).await;
                    drop(subject);
                }
            )*
        }
    };
}

/// Runs every event-stream case against `$factory`, an `async fn() -> Subject<dyn EventStream>`.
/// Each case gets its own reader and aggregate prefix.
#[macro_export]
macro_rules! event_stream_suite {
    ($factory:ident) => {
        $crate::event_stream_suite!(@cases $factory;
            an_aggregate_keeps_its_order_in_its_partition,
            a_republished_event_id_is_not_appended_again,
            readers_are_independent_and_resume_after_their_acks,
            the_backlog_is_what_a_reader_has_not_acknowledged,
        );
    };
    (@cases $factory:ident; $($case:ident),* $(,)?) => {
        mod event_stream_conformance {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let subject = super::$factory().await;
                    $crate::event_stream::$case(subject.store.clone(), stringify!($case)).await;
                    drop(subject);
                }
            )*
        }
    };
}
