//! The failure-free comparison: measured on the in-memory network, checked against formulas.

use tandem_protocols::sim::compare;

#[test]
fn measured_costs_match_the_formulas_for_3_and_5_participants() {
    for n in [3u8, 5] {
        for f in [0u8, 1, 2] {
            for row in compare(n, f) {
                let m = &row.measured;
                println!(
                    "N={n} F={f} {:<45} messages {:>2} (+{} after the decision) delays {} forced writes {:>2}",
                    row.protocol,
                    m.messages,
                    m.messages_total - m.messages,
                    m.delays,
                    m.forced_writes
                );
                assert!(row.matches(), "N={n} F={f}: {row:#?}");
            }
        }
    }
}

#[test]
fn paxos_commit_with_one_acceptor_beside_the_leader_costs_what_2pc_costs() {
    for n in [3u8, 5] {
        let rows = compare(n, 0);
        let two_pc = &rows[0].measured;
        let colocated = &rows.last().unwrap().measured;
        assert_eq!(
            (two_pc.messages, two_pc.delays),
            (colocated.messages, colocated.delays)
        );
        assert_eq!(colocated.forced_writes, n as usize + 1);
    }
}

#[test]
fn the_gray_lamport_delay_counts_hold() {
    let rows = compare(5, 1);
    let delays: Vec<u32> = rows.iter().map(|r| r.measured.delays).collect();
    assert_eq!(delays, vec![4, 3, 6, 5]);
}

#[test]
fn coordinator_initiated_2pc_costs_3n_messages_and_3_delays() {
    for n in [3u8, 5] {
        let row = &compare(n, 1)[1];
        assert!(row.protocol.contains("coordinator begins"), "{row:#?}");
        let m = &row.measured;
        let n = n as usize;
        assert_eq!(
            (m.messages, m.delays, m.forced_writes),
            (3 * n, 3, 2 * n + 2)
        );
        assert_eq!(m.messages_total, 4 * n);
    }
}
