"""Which tests run only in the full tier (`python -m pytest -q --full`, what CI runs).

The README's `python -m pytest -q` keeps every script and every README command end to end once (the quick
start, its checks, the merge, the demo in a browser, one bad-setting run per script) and the in-process
tests; the full tier adds the fault matrices, kill/resume, data parallel, the Flan-T5 twin's chain and the
other repeats. docs/testing.md records the measured times the split rests on."""

ALL = "*"

FULL_TIER: dict[str, set[str] | str] = {
    "test_faults.py": ALL,
    "test_heldout.py": {
        "test_a_kill_inside_a_heldout_evaluation_resumes_to_the_files_of_an_uninterrupted_run",
        "test_each_point_is_the_slice_answered_again_with_the_saved_adapter",
        "test_the_best_adapter_survives_rotation_and_evaluates",
        "test_the_picture_and_tensorboard_show_the_curve",
        "test_two_processes_share_the_slice",
    },
    "test_t5_family.py": ALL,
    "test_testdev.py": ALL,
    "test_tensorboard.py": {
        "test_a_full_log_dir_warns_once_and_training_goes_on",
        "test_curves_equal_the_training_log_and_a_killed_run_continues_its_curve",
        "test_default_log_dir_is_inside_the_output_folder",
        "test_off_by_default_writes_no_event_file",
        "test_two_output_folders_of_one_name_sharing_a_log_dir_keep_their_own_curves",
    },
    "test_bad_input.py": {
        "test_a_damaged_frozen_sample_is_refused_and_the_rows_are_kept",
        "test_a_real_adapter_changes_the_answers",
        "test_an_adapter_must_change_the_model_damaged_ones_are_refused",
        "test_an_output_file_that_is_a_folder_is_said_before_the_run",
        "test_cli_device_without_cuda_and_folder_with_unreadable_images",
        "test_comparison_refuses_rows_with_wrong_field_types",
        "test_damaged_data_files_are_one_line_before_the_model_loads",
        "test_damaged_model_folders_name_the_file",
        "test_file_names_that_are_not_utf8_keep_every_row",
        "test_fine_tuning_on_a_full_disk_keeps_its_checkpoints_and_resumes",
        "test_fine_tuning_resumes_with_the_same_model_folder_spelled_differently",
        "test_hub_path_that_does_not_exist_and_a_damaged_cache_record",
        "test_one_path_rule_home_other_folder_and_spelling",
        "test_weights_that_do_not_fit_the_config_are_refused_in_one_line",
    },
    "test_merge.py": {
        "test_a_killed_merge_leaves_the_old_folder_or_none",
        "test_a_merge_that_fills_the_disk_says_so_in_its_own_words",
        "test_a_qlora_merge_is_w_plus_ba_to_the_rounding_of_its_dtype",
        "test_an_overwriting_merge_keeps_the_users_files_and_a_half_finished_replace_comes_back",
        "test_bad_input_is_one_line_before_the_model_loads",
        "test_the_card_of_an_unquantised_merge",
        "test_the_merged_model_with_its_own_adapter_again_is_refused",
        "test_unquantised_adapter_merged_answers_exactly_as_base_plus_adapter",
        "test_unquantised_merge_is_w_plus_ba_on_the_plain_weights",
    },
    "test_pipeline.py": {
        "test_a_bad_training_image_is_one_line_even_from_dataloader_workers",
        "test_a_damaged_newest_checkpoint_falls_back_to_the_one_before",
        "test_importing_the_libraries_offline_prints_no_notice",
        "test_missing_and_corrupt_images_become_error_rows",
        "test_missing_dataset_files_name_the_path_and_the_readme",
        "test_nan_loss_stops_and_keeps_the_last_good_checkpoint",
        "test_resume_checks_every_row_and_names_the_foreign_one",
        "test_sample_ids_from_another_dataset_are_refused",
        "test_two_processes_train_and_evaluate_data_parallel",
    },
    "test_real_model_needs.py": {
        "test_a_baseline_prints_its_interval_the_published_number_and_warns_only_far_below",
        "test_a_checkpoint_save_asks_no_server",
        "test_a_config_without_image_token_gives_one_line_saying_how_to_fix",
        "test_a_tokenizer_that_drops_bos_is_refused_naming_its_files",
        "test_a_two_process_resume_gives_each_rank_its_own_random_state",
        "test_evaluation_workers_start_under_spawn",
        "test_gpu_check_smoke_profile_writes_operator_tables",
        "test_train_step_bench_shows_the_vision_tower_out_of_the_graph",
    },
    "test_hub_dataset.py": {
        "test_baseline_from_a_rate_limiting_mirror_without_the_default_repo",
    },
    "test_hub_training.py": {
        "test_a_killed_hub_fine_tuning_resumes_to_the_uninterrupted_adapter",
        "test_an_evaluation_on_the_training_pictures_is_refused_unless_allowed",
        "test_hub_fine_tuning_leaves_out_the_frozen_sample_and_records_its_pictures",
        "test_the_demo_and_the_demo_captions_refuse_pictures_the_adapter_trained_on",
        "test_the_twin_reads_the_image_after_hub_fine_tuning",
    },
    "test_scripts.py": {
        "test_a_baseline_and_an_evaluation_of_different_precision_are_said_to_differ",
        "test_an_adapter_trained_on_another_name_of_the_same_shapes_is_warned_about",
        "test_model_that_cannot_be_fetched",
        "test_odd_but_valid_images_work",
        "test_outputs_are_readable_by_others_and_home_is_expanded",
        "test_the_next_lines_paste_as_they_are_with_a_space_in_the_path",
    },
    "test_training.py": {
        "test_lora_inside_the_vision_tower_trains",
    },
    "test_lora_scopes.py": {
        "test_a_4bit_both_adapter_merges_onto_the_dequantised_language_model_and_the_plain_qformer",
        "test_a_run_resumed_with_another_scope_is_refused_in_one_line",
        "test_each_scope_fine_tunes_every_adapted_layer_and_changes_the_answers",
        "test_each_scope_merges_into_a_model_that_answers_as_base_plus_adapter",
        "test_the_training_banner_counts_what_the_memory_plan_counts",
    },
    "test_demo.py": {
        "test_browser_comparison_tab_shows_result_text_as_text",
        "test_browser_language_switch_and_report_in_both_languages",
        "test_browser_paste_and_webcam_pictures",
        "test_twenty_concurrent_requests_none_fails_and_memory_stays_flat",
    },
    "test_quantization.py": {
        "test_4bit_parts_run_in_the_dtypes_the_notes_say[t5-dtype3]",
        "test_4bit_parts_run_in_the_dtypes_the_notes_say[t5-dtype4]",
    },
    "test_readme.py": {
        "test_a_group_runs_on_one_worker",
        "test_tests_pass_when_started_by_path_to_the_venv_python",
        "test_the_quick_tier_is_the_tests_that_need_no_twin",
    },
    "test_data.py": {
        "test_conversion_killed_midway_is_redone_on_the_next_run",
        "test_incomplete_folder_marked_converted_is_converted_again",
        "test_two_first_time_runs_at_once_both_succeed_with_one_complete_folder",
        "test_waiting_lock_goes_on_when_the_holder_finishes",
    },
    "test_multirun.py": {
        "test_one_file_in_finetuned_files_is_the_two_run_report",
        "test_the_demos_comparison_tab_shows_the_three_runs_in_a_browser",
        "test_two_evaluations_of_the_twin_in_one_folder_compare_side_by_side",
    },
    "test_compare.py": {
        "test_allow_partial_compares_the_intersection",
        "test_an_unbroken_long_answer_wraps_inside_the_report",
        "test_report_goes_under_the_output_dir_when_one_is_given",
        "test_the_repositorys_outputs_spelled_absolutely_from_elsewhere_report_where_the_demo_looks",
    },
    "test_model_download.py": {
        "test_a_listing_without_sizes_warns_when_the_cache_disk_is_small",
        "test_a_model_that_does_not_fit_the_cache_disk_is_one_line_before_the_download",
    },
    "test_gpu_check_family.py": {
        "test_gpu_check_smoke_reads_a_model_folder",
        "test_gpu_check_smoke_runs_flan_t5_xl",
    },
    "test_twin.py": {
        "test_same_command_same_weights",
    },
    "test_memory_plan.py": {
        "test_the_bench_plans_every_checkpoint_offline[Salesforce/blip2-flan-t5-xxl]",
        "test_the_bench_plans_every_checkpoint_offline[Salesforce/blip2-opt-6.7b]",
    },
}

def in_full_tier(module: str, test: str, case: str = "") -> bool:
    """`test` is the function's name, `case` the name with its parameters (test[a-b])."""
    chosen = FULL_TIER.get(module, ())
    return chosen == ALL or test in chosen or case in chosen
