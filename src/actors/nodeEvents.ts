// What the node announces to its subscribers, in a file of its own so the parts of the node that
// emit events need not import node.ts (which imports them).
/** What the node announces to subscribers (SPEC §8 notifications). */
export interface NodeEvent {
  type:
    | 'bdev_created'
    | 'bdev_deleted'
    | 'lvstore_created'
    | 'lvstore_deleted'
    | 'lvol_created'
    | 'lvol_deleted'
    | 'lvstore_changed'
    | 'lvol_changed'
    | 'checksum_state'
    | 'checksum_progress'
    | 'checksum_preempted'
    | 'checksum_mismatch'
    | 'copy_state'
    | 'copy_progress';
  [key: string]: unknown;
}
